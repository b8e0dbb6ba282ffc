"""Writes that would reach what the principal can't see.

The hostile agent sets foreign keys to rows of another tenant or user (hidden models, composite
keys matched column by column, keys through masked columns) and uses a write's check as an
oracle. Each is refused before any statement (by the policy) or with the same error as a key
that exists nowhere, and nothing is written. SQLite, PostgreSQL and MariaDB, sync (psycopg,
PyMySQL) and async (asyncpg, aiomysql) sessions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import CheckConstraint, ForeignKey, ForeignKeyConstraint, Integer, String, func, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ormai_agents import (
    FieldAction,
    FieldPolicy,
    ModelPolicy,
    OrmAIError,
    Policy,
    PolicyError,
    RowPolicy,
    RunContext,
    Toolset,
    ValidationError,
    WriteAction,
    WritePolicy,
)
from tests.conftest import ACME, BACKENDS, Backend

pytestmark = pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)

U1 = ACME  # sees the accounts of user u1
TENANT = {"tenant_id": "principal.tenant_id"}


class Base(DeclarativeBase):
    pass


class Vault(Base):
    """Never exposed to the agent."""

    __tablename__ = "reach_vaults"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    secret: Mapped[str] = mapped_column(String(40))


class Account(Base):
    """A composite key (region, code); each account belongs to one user."""

    __tablename__ = "reach_accounts"
    region: Mapped[str] = mapped_column(String(10), primary_key=True)
    code: Mapped[str] = mapped_column(String(10), primary_key=True)
    owner: Mapped[str] = mapped_column(String(40))


class Note(Base):
    __tablename__ = "reach_notes"
    __table_args__ = (ForeignKeyConstraint(["region", "code"], ["reach_accounts.region", "reach_accounts.code"]),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    owner: Mapped[str] = mapped_column(String(40))
    vault_id: Mapped[int | None] = mapped_column(ForeignKey("reach_vaults.id"))
    region: Mapped[str | None] = mapped_column(String(10))
    code: Mapped[str | None] = mapped_column(String(10))
    text: Mapped[str | None] = mapped_column(String(100))


class Allowance(Base):
    """The same rule as a CHECK constraint of the table, not a row policy."""

    __tablename__ = "reach_allowances"
    __table_args__ = (CheckConstraint("spend <= credit_limit", name="ck_allowance_within_limit"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    spend: Mapped[int] = mapped_column(Integer)
    credit_limit: Mapped[int] = mapped_column(Integer)


class Budget(Base):
    __tablename__ = "reach_budgets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    spend: Mapped[int] = mapped_column(Integer)
    credit_limit: Mapped[int] = mapped_column(Integer)


VAULTS = [(1, "acme"), (2, "globex"), (3, "acme"), (4, "initech"), (5, "globex")]
ACCOUNTS = [("eu", "A", "u1"), ("us", "B", "u1"), ("eu", "B", "u2"), ("us", "A", "u2"), ("eu", "C", "u2")]


def note_policy(*, vault: ModelPolicy | None = None, account_fields: dict[str, Any] | None = None,
                note_fields: tuple[str, ...] = ("vault_id", "region", "code", "text")) -> Policy:  # fmt: skip
    models = {
        "Note": ModelPolicy(
            fields={"id": "allow", "tenant_id": "allow", "owner": "allow", **{f: "allow" for f in note_fields}},
            scoping={**TENANT, "owner": "principal.user_id"},
            write_policy=WritePolicy(create=WriteAction.Allow, update=WriteAction.Allow, bulk_update=WriteAction.Allow,
                                     auto_set={"tenant_id": "principal.tenant_id", "owner": "principal.user_id"}),
        ),  # fmt: skip
        "Account": ModelPolicy(fields=account_fields or {"region": "allow", "code": "allow", "owner": "allow"},
                               scoping={"owner": "principal.user_id"}),  # fmt: skip
    }
    if vault is not None:
        models["Vault"] = vault
    return Policy(models=models)


HIDDEN_VAULT = ModelPolicy(allowed=False, scoping=TENANT)


@pytest.fixture
def backend(empty_backend: Backend) -> Backend:
    Base.metadata.create_all(empty_backend.sync_engine)
    with empty_backend.sync_engine.begin() as conn:
        conn.execute(insert(Vault), [{"id": i, "tenant_id": t, "secret": f"s{i}"} for i, t in VAULTS])
        conn.execute(insert(Account), [{"region": r, "code": c, "owner": o} for r, c, o in ACCOUNTS])
        # ids 1 and 2 from the database, so its sequence stays ahead of them
        conn.execute(insert(Note).values(tenant_id="acme", owner="u1", region="eu", code="A"))
        conn.execute(insert(Note).values(tenant_id="acme", owner="u1"))
    return empty_backend


def notes(backend: Backend) -> list[tuple[Any, ...]]:
    with backend.sync_engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(Note.__table__).order_by(Note.id))]


async def attempt(backend: Backend, use_async: bool, call: Any) -> Any:
    """The call's result, or the OrmAIError it raised."""
    try:
        if use_async:
            async with backend.async_session() as db:
                return await call(db)
        with backend.session() as db:
            return await call(db)
    except OrmAIError as exc:
        return exc


# --- references into models the policy does not expose --------------------------------------


def test_a_writable_reference_into_an_undescribed_table_is_refused(backend: Backend) -> None:
    with pytest.raises(PolicyError, match="vault_id refers to table 'reach_vaults', which no model of the policy"):
        Toolset(Base, note_policy())
    # Not writable: nothing to check, nothing refused.
    Toolset(Base, note_policy(note_fields=("region", "code", "text")))
    # Listed with allowed=False: the policy says how to scope it.
    toolset = Toolset(Base, note_policy(vault=HIDDEN_VAULT))
    assert "Vault" not in toolset.model_names


def test_references_into_a_hidden_model_never_tell_which_ids_exist(backend: Backend) -> None:
    toolset = Toolset(Base, note_policy(vault=HIDDEN_VAULT))
    loop = asyncio.new_event_loop()
    outcomes: dict[str, set[str]] = {"elsewhere": set(), "nowhere": set()}

    async def run(vault_id: int, op: str, use_async: bool) -> None:
        before = notes(backend)
        tenant = dict(VAULTS).get(vault_id)
        if op == "create":
            result = await attempt(backend, use_async, lambda db: toolset.create(RunContext(ACME, db), "Note", {"vault_id": vault_id}))
        elif op == "update":
            result = await attempt(backend, use_async, lambda db: toolset.update(RunContext(ACME, db), "Note", 2, {"vault_id": vault_id}))
        else:
            result = await attempt(backend, use_async, lambda db: toolset.bulk_update(
                RunContext(ACME, db), "Note", [{"field": "id", "op": "in", "value": [1, 2]}], {"vault_id": vault_id}))  # fmt: skip
        if tenant == "acme":
            assert not isinstance(result, OrmAIError), result
            return
        assert isinstance(result, ValidationError), result
        assert notes(backend) == before  # nothing written
        assert "Vault" not in result.message and "vault" not in result.message.replace("vault_id", "")
        outcomes["elsewhere" if tenant else "nowhere"].add(result.message)

    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.integers(-3, 9), st.sampled_from(["create", "update", "bulk_update"]), st.booleans())
    def check(vault_id: int, op: str, use_async: bool) -> None:
        loop.run_until_complete(run(vault_id, op, use_async))

    try:
        check()
        # The fixed cases hypothesis may not draw: another tenant's id and an id that exists nowhere.
        for vault_id in (2, 99):
            loop.run_until_complete(run(vault_id, "create", False))
    finally:
        loop.close()
    # Another tenant's vault and one that does not exist: the very same refusal.
    assert outcomes["elsewhere"] == outcomes["nowhere"] and len(outcomes["nowhere"]) == 1


# --- composite keys -------------------------------------------------------------------------


async def test_a_composite_reference_is_checked_as_one_tuple(backend: Backend) -> None:
    toolset = Toolset(Base, note_policy(vault=HIDDEN_VAULT))
    # u1 sees (eu, A) and (us, B). (eu, B) is u2's: each column alone matches a row u1 sees.
    for use_async in (False, True):
        for data in ({"region": "eu", "code": "B"}, {"region": "us", "code": "A"}, {"region": "eu", "code": "Z"}):
            before = notes(backend)
            result = await attempt(backend, use_async, lambda db: toolset.create(RunContext(U1, db), "Note", data))
            assert isinstance(result, ValidationError) and result.message.startswith("data.region: no Account with that id")
            assert notes(backend) == before
        # An update changing one column of the key: checked with the row's other column.
        result = await attempt(backend, use_async, lambda db: toolset.update(RunContext(U1, db), "Note", 1, {"code": "B"}))
        assert isinstance(result, ValidationError) and result.message.startswith("data.code:")
        result = await attempt(backend, use_async, lambda db: toolset.update(RunContext(U1, db), "Note", 1, {"region": "us"}))
        assert isinstance(result, ValidationError)
        assert notes(backend)[0][4:6] == ("eu", "A")
    ok = await attempt(backend, False, lambda db: toolset.create(RunContext(U1, db), "Note", {"region": "us", "code": "B"}))
    assert not isinstance(ok, OrmAIError) and ok.data["code"] == "B"
    moved = await attempt(backend, True, lambda db: toolset.update(RunContext(U1, db), "Note", 1, {"region": "us", "code": "B"}))
    assert not isinstance(moved, OrmAIError)
    # A tuple with a NULL refers to nothing: the database does not check it, nor does the toolset.
    cleared = await attempt(backend, False, lambda db: toolset.update(RunContext(U1, db), "Note", 1, {"code": None}))
    assert not isinstance(cleared, OrmAIError)


def test_a_reference_through_a_field_the_agent_cant_read_plainly_is_refused(backend: Backend) -> None:
    for action in (FieldAction.Mask, FieldAction.Hash, FieldAction.Deny):
        fields = {"region": "allow", "code": FieldPolicy(action=action), "owner": "allow"}
        with pytest.raises(PolicyError, match="through fields of Account the agent can't read plainly"):
            Toolset(Base, note_policy(vault=HIDDEN_VAULT, account_fields=fields))


# --- restrict policies as oracles -----------------------------------------------------------


def budget_policy(*, accept: bool = False, credit: FieldAction = FieldAction.Mask) -> Policy:
    return Policy(models={"Budget": ModelPolicy(
        fields={"id": "allow", "tenant_id": "allow", "spend": "allow", "credit_limit": FieldPolicy(action=credit)},
        scoping=TENANT,
        row_policies=[RowPolicy("within_limit", "spend <= credit_limit", accept_write_oracle=accept)],
        write_policy=WritePolicy(update=WriteAction.Allow, create=WriteAction.Allow,
                                 auto_set={"tenant_id": "principal.tenant_id"}),
    )})  # fmt: skip


async def test_a_restrict_policy_relating_a_written_field_to_a_hidden_one_is_refused(backend: Backend) -> None:
    for credit in (FieldAction.Mask, FieldAction.Hash, FieldAction.Deny):
        with pytest.raises(PolicyError, match="relates spend, which the agent writes, to credit_limit"):
            Toolset(Base, budget_policy(credit=credit))
    # Readable: no oracle. Explicitly accepted: built.
    Toolset(Base, budget_policy(credit=FieldAction.Allow))
    accepted = Toolset(Base, budget_policy(accept=True))
    # What the acceptance means: writes probe the hidden limit (here, 100).
    with backend.sync_engine.begin() as conn:
        conn.execute(insert(Budget), [{"id": 1, "tenant_id": "acme", "spend": 10, "credit_limit": 100}])
    probes = {}
    for spend in (99, 100, 101):
        result = await attempt(backend, False, lambda db: accepted.update(RunContext(ACME, db), "Budget", 1, {"spend": spend}))
        probes[spend] = isinstance(result, OrmAIError)
    assert probes == {99: False, 100: False, 101: True}
    with backend.sync_engine.connect() as conn:
        assert conn.execute(select(func.max(Budget.spend))).scalar_one() == 100


def allowance_policy(credit: FieldAction, spend_writable: bool = True) -> Policy:
    return Policy(models={"Allowance": ModelPolicy(
        fields={"id": "allow", "tenant_id": "allow", "spend": "allow", "credit_limit": FieldPolicy(action=credit)},
        scoping=TENANT,
        write_policy=WritePolicy(update=WriteAction.Allow if spend_writable else WriteAction.Deny,
                                 auto_set={"tenant_id": "principal.tenant_id"}),
    )})  # fmt: skip


async def test_lint_flags_check_constraints_relating_a_written_field_to_a_hidden_one(backend: Backend) -> None:
    from ormai_agents.lint import lint_policy

    def found(policy: Policy) -> list[tuple[str | None, str]]:
        return [(f.model, f.severity) for f in lint_policy(policy, backend.sync_engine, models=Base)
                if f.code == "check-constraint-oracle"]  # fmt: skip

    for credit in (FieldAction.Mask, FieldAction.Hash, FieldAction.Deny):
        assert found(allowance_policy(credit)) == [("Allowance", "warning")]
    assert found(allowance_policy(FieldAction.Allow)) == []  # readable: nothing to learn
    assert found(allowance_policy(FieldAction.Mask, spend_writable=False)) == []  # nothing written
    # What it warns of: the outcome of a write tells where the masked limit (100) lies.
    with backend.sync_engine.begin() as conn:
        conn.execute(insert(Allowance), [{"id": 1, "tenant_id": "acme", "spend": 10, "credit_limit": 100}])
    toolset = Toolset(Base, allowance_policy(FieldAction.Mask))
    outcomes = {}
    for spend in (100, 101):
        result = await attempt(backend, False, lambda db: toolset.update(RunContext(ACME, db), "Allowance", 1, {"spend": spend}))
        outcomes[spend] = getattr(result, "code", "ok")
    assert outcomes == {100: "ok", 101: "constraint_violation"}


# --- deleting a row that invisible rows still refer to ----------------------------------------


async def test_lint_flags_references_that_cross_scopes_into_deletable_models(wb: Backend) -> None:
    from sqlalchemy import event

    from ormai_agents.lint import lint_policy
    from tests import shop

    base = shop.shop_policy()
    deletable = WritePolicy(delete=WriteAction.Allow)
    policy = Policy(models={**base.models, "Customer": base.models["Customer"].model_copy(update={"write_policy": deletable})})
    findings = [f for f in lint_policy(policy, wb.sync_engine, models=shop.Base) if f.code == "cross-scope-reference"]
    assert [(f.model, f.severity) for f in findings] == [("Order", "warning")]
    assert "customer_id" in findings[0].message and "constraint_violation" in findings[0].message
    assert not [f for f in lint_policy(base, wb.sync_engine, models=shop.Base) if f.code == "cross-scope-reference"]
    # What it warns of: an acme customer that a globex order refers to can't be deleted by acme.
    with wb.sync_engine.connect() as conn:
        crossing = conn.execute(
            select(shop.Customer.id).join(shop.Order, shop.Order.customer_id == shop.Customer.id)
            .where(shop.Customer.tenant_id == "acme", shop.Order.tenant_id != "acme").limit(1)
        ).scalar_one()  # fmt: skip
    if wb.is_sqlite:  # SQLite enforces foreign keys only when asked to

        @event.listens_for(wb.sync_engine, "connect")
        def _fk(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.execute("PRAGMA foreign_keys=ON")

        wb.sync_engine.dispose()
    toolset = Toolset(shop.Base, policy)
    with wb.session() as db:
        with pytest.raises(OrmAIError) as info:
            await toolset.delete(RunContext(ACME, db), "Customer", crossing)
    assert info.value.code == "constraint_violation" and "globex" not in info.value.message
    with wb.sync_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(shop.Customer).where(shop.Customer.id == crossing)).scalar_one() == 1
