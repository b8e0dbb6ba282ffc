"""Smaller leaks: the order of rows, cursors, policies that name hidden fields, principal types.

- Rows are ordered, and ties broken, only by fields the principal may read: a hidden primary key
  never decides the order of a page, of an include, or where a page ends.
- Cursors carry only readable values, signed.
- `required_fields` naming a denied field is refused when the toolset is built.
- Principal ids are str or int, and principals that differ only in the types of their values
  (`True` / `1` / `1.0`) never share a cache entry, a scope or a cursor.

SQLite, PostgreSQL and MariaDB; sync sessions (psycopg, PyMySQL) and async ones (asyncpg, aiomysql).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import ForeignKey, Integer, String, delete, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ormai_agents import (
    AccessDeniedError,
    FieldAction,
    FieldPolicy,
    InvalidCursorError,
    ModelPolicy,
    Policy,
    PolicyError,
    Principal,
    RunContext,
    Toolset,
    WriteAction,
    WritePolicy,
)
from tests import shop
from tests._truth import walk
from tests.conftest import ACME, BACKENDS, Backend

pytestmark = pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)

KEY = b"smaller-leaks-key" * 2


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "leak_parents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    children: Mapped[list[Child]] = relationship(back_populates="parent")


class Child(Base):
    """A hidden primary key, and a readable unique code."""

    __tablename__ = "leak_children"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    parent_id: Mapped[int] = mapped_column(ForeignKey("leak_parents.id"))
    code: Mapped[str] = mapped_column(String(40), unique=True)
    rank: Mapped[int] = mapped_column(Integer)
    parent: Mapped[Parent] = relationship(back_populates="children")


class Entry(Base):
    """A hidden primary key and nothing unique that the agent may read."""

    __tablename__ = "leak_entries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(40))
    n: Mapped[int | None] = mapped_column(Integer)


class Item(Base):
    """Scoped by an integer organisation id taken from the principal's metadata."""

    __tablename__ = "leak_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(40))


def policy(child_id: FieldAction = FieldAction.Hash, entry_id: FieldAction = FieldAction.Deny) -> Policy:
    tenant = {"tenant_id": "principal.tenant_id"}
    return Policy(
        models={
            "Parent": ModelPolicy(fields={"id": "allow", "tenant_id": "allow"}, scoping=tenant),
            "Child": ModelPolicy(
                fields={"id": FieldPolicy(action=child_id), "tenant_id": "allow", "parent_id": "allow", "code": "allow",
                        "rank": "allow"},
                scoping=tenant,
            ),  # fmt: skip
            "Entry": ModelPolicy(fields={"id": FieldPolicy(action=entry_id), "tenant_id": "allow", "kind": "allow", "n": "allow"},
                                 scoping=tenant),  # fmt: skip
            "Item": ModelPolicy(fields={"id": "allow", "org": "allow", "name": "allow"}, scoping={"org": "principal.metadata.org"}),
        },
        max_rows=50,
    )


CODES = [f"c{i:02d}" for i in range(12)]


@pytest.fixture
def db_backend(empty_backend: Backend) -> Backend:
    """Children whose ids run opposite to their codes, in two ranks; entries; items of two orgs."""
    Base.metadata.create_all(empty_backend.sync_engine)
    with empty_backend.sync_engine.begin() as conn:
        conn.execute(insert(Parent), [{"id": 1, "tenant_id": "acme"}, {"id": 2, "tenant_id": "globex"}])
        conn.execute(insert(Child), [
            {"id": 100 - i, "tenant_id": "acme", "parent_id": 1, "code": code, "rank": i % 2} for i, code in enumerate(CODES)
        ] + [{"id": 200 + i, "tenant_id": "globex", "parent_id": 2, "code": f"g{i}", "rank": 0} for i in range(3)])  # fmt: skip
        conn.execute(insert(Entry), [
            {"id": 50 - i, "tenant_id": "acme", "kind": "k" + str(i % 3), "n": i} for i in range(9)
        ])  # fmt: skip
        conn.execute(insert(Item), [{"id": i, "org": i % 2, "name": f"item{i}"} for i in range(1, 7)])
    return empty_backend


@pytest.fixture(params=["sync", "async"])
async def db(request: pytest.FixtureRequest, db_backend: Backend) -> Any:
    if request.param == "sync":
        with db_backend.session() as s:
            yield s
    else:
        async with db_backend.async_session() as s:
            yield s


def cursor_values(cursor: str) -> list[Any]:
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    return json.loads(raw[:-16])["v"]  # type: ignore[no-any-return]


# --- order ----------------------------------------------------------------------------------


async def test_ties_are_broken_by_a_readable_unique_key_never_by_a_hidden_one(db: Any) -> None:
    toolset = Toolset(Base, policy(), secret_key=KEY)
    ctx = RunContext(ACME, db)
    # rank ties: the order within a rank follows code (readable), not id (hashed, and opposite).
    rows = await walk(toolset, ctx, "Child", order_by=["rank"], limit=4)
    assert [r["code"] for r in rows] == sorted(CODES, key=lambda c: (CODES.index(c) % 2, c))
    assert [r["code"] for r in await walk(toolset, ctx, "Child", limit=5)] == CODES
    assert [r["code"] for r in await walk(toolset, ctx, "Child", order_by=["-rank"], limit=5)] == sorted(
        CODES, key=lambda c: (-(CODES.index(c) % 2), c)
    )


async def test_cursors_carry_only_readable_values(db: Any) -> None:
    toolset = Toolset(Base, policy(), secret_key=KEY)
    ctx = RunContext(ACME, db)
    page = await toolset.query(ctx, model="Child", order_by=["-rank"], limit=3, select=["code"])
    assert page.next_cursor is not None
    last = page.rows[-1]["code"]
    # The sort key and the readable tie-breaker of the last row: nothing hidden, nothing else.
    assert cursor_values(page.next_cursor) == [CODES.index(last) % 2, last]
    hidden_ids = {str(100 - i) for i in range(len(CODES))}
    assert not hidden_ids & {str(v) for v in cursor_values(page.next_cursor)}
    # Signed: a cursor whose values were edited is refused.
    raw = base64.urlsafe_b64decode(page.next_cursor + "=" * (-len(page.next_cursor) % 4))
    body = json.loads(raw[:-16])
    body["v"][1] = "c00"
    forged = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode() + raw[-16:]).decode().rstrip("=")
    with pytest.raises(InvalidCursorError):
        await toolset.query(ctx, model="Child", order_by=["-rank"], limit=3, select=["code"], cursor=forged)


async def test_included_rows_are_ordered_by_readable_fields(db: Any) -> None:
    toolset = Toolset(Base, policy(), secret_key=KEY)
    parent = (await toolset.get(RunContext(ACME, db), model="Parent", id=1, include=["children"])).data
    assert [c["code"] for c in parent["children"]] == CODES
    small = Policy(models={**policy().models, "Child": policy().models["Child"].model_copy(update={"max_rows": 4})})
    parent = (await Toolset(Base, small, secret_key=KEY).get(RunContext(ACME, db), model="Parent", id=1, include=["children"])).data
    assert [c["code"] for c in parent["children"]] == CODES[:4]  # the first by code, not by hidden id


async def test_without_a_readable_unique_key_a_query_is_one_ordered_page(db: Any) -> None:
    toolset = Toolset(Base, policy(), secret_key=KEY)
    ctx = RunContext(ACME, db)
    page = await toolset.query(ctx, model="Entry", limit=4)
    assert page.next_cursor is None and page.truncated and page.to_dict()["truncated"] is True
    # Ordered by every readable comparable field: (kind, n), never by the hidden id.
    everything = sorted(("k" + str(i % 3), i) for i in range(9))
    assert [(r["kind"], r["n"]) for r in page.rows] == everything[:4]
    whole = await toolset.query(ctx, model="Entry")
    assert not whole.truncated and [(r["kind"], r["n"]) for r in whole.rows] == everything
    assert "truncated" not in whole.to_dict()
    with pytest.raises(InvalidCursorError):
        await toolset.query(ctx, model="Entry", cursor="eyJ2IjpbXX0")
    # A readable primary key pages as before.
    readable = Toolset(Base, policy(entry_id=FieldAction.Allow), secret_key=KEY)
    assert len(await walk(readable, ctx, "Entry", limit=2)) == 9


@st.composite
def _layouts(draw: st.DrawFn) -> tuple[list[tuple[str, int]], list[tuple[str, int | None]], list[int], list[int]]:
    """Children and entries whose readable values collide under folding collations, and two
    different assignments of hidden keys to the same rows."""
    child = st.tuples(st.sampled_from(["a", "B", "b", "é", "a "]), st.integers(0, 2))
    entry = st.tuples(st.sampled_from(["k0", "k1", "K1", "k1 ", "ké"]), st.one_of(st.none(), st.integers(0, 2)))
    children = draw(st.lists(child, min_size=1, max_size=12))
    entries = draw(st.lists(entry, min_size=1, max_size=10))
    size = max(len(children), len(entries))
    ids = st.permutations(range(1, 100))
    return children, entries, draw(ids)[:size], draw(ids)[:size]


async def _observe(backend: Backend, toolset: Toolset, order: list[str], limit: int) -> list[Any]:
    """Every page (rows and cursor values) of children and entries, and a parent's children."""
    with backend.session() as db:
        ctx = RunContext(ACME, db)
        seen: list[Any] = []
        cursor = None
        while True:
            page = await toolset.query(
                ctx, model="Child", order_by=order, limit=limit, cursor=cursor, select=["code", "rank"]
            )
            seen.append((page.rows, cursor_values(page.next_cursor) if page.next_cursor else None))
            if (cursor := page.next_cursor) is None:
                break
        entry_order = [o.replace("code", "kind").replace("rank", "n") for o in order]
        entries = await toolset.query(ctx, model="Entry", order_by=entry_order, limit=limit, select=["kind", "n"])
        seen.append(entries.rows)
        seen.append((await toolset.get(ctx, model="Parent", id=1, include=["children"])).data["children"])
        return [json.loads(json.dumps(s, default=str)) for s in seen]


def test_the_order_of_rows_never_depends_on_hidden_keys(empty_backend: Backend) -> None:
    # The same readable rows under two assignments of hidden keys: every page, cursor and
    # included list is the same. Rows equal to a folding collation ('k1', 'K1 ' on MariaDB)
    # were once left in the database's order, which is the hidden key's.
    Base.metadata.create_all(empty_backend.sync_engine)
    toolset = Toolset(Base, policy(child_id=FieldAction.Deny), secret_key=KEY)
    loop = asyncio.new_event_loop()

    def load(children: list[tuple[str, int]], entries: list[tuple[str, int | None]], ids: list[int]) -> None:
        with empty_backend.sync_engine.begin() as conn:
            for table in (Child, Entry, Parent):
                conn.execute(delete(table))
            conn.execute(insert(Parent), [{"id": 1, "tenant_id": "acme"}])
            conn.execute(insert(Child), [
                {"id": ids[k], "tenant_id": "acme", "parent_id": 1, "code": f"{code}{k}", "rank": rank}
                for k, (code, rank) in enumerate(children)
            ])  # fmt: skip
            conn.execute(insert(Entry), [
                {"id": ids[k], "tenant_id": "acme", "kind": kind, "n": n} for k, (kind, n) in enumerate(entries)
            ])  # fmt: skip

    orders = st.lists(st.sampled_from(["rank", "-rank", "code", "-code"]), max_size=2, unique=True)

    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(_layouts(), orders, st.integers(1, 5))
    @example(([("a", 0)], [("k1", 0), ("K1", 0), ("k1 ", 0)], [1, 2, 3], [3, 2, 1]), ["rank"], 1)
    def check(layout: Any, order: list[str], limit: int) -> None:
        children, entries, ids_a, ids_b = layout
        load(children, entries, ids_a)
        first = loop.run_until_complete(_observe(empty_backend, toolset, order, limit))
        load(children, entries, ids_b)
        assert loop.run_until_complete(_observe(empty_backend, toolset, order, limit)) == first

    try:
        check()
    finally:
        loop.close()


# --- policies naming hidden fields -------------------------------------------------------------


def test_required_fields_naming_a_denied_or_unwritable_field_are_refused(empty_backend: Backend) -> None:
    base = shop.shop_policy()
    order = base.models["Order"]
    for required, create in (("internal_note", WriteAction.Deny), ("internal_note", WriteAction.Allow),
                             ("password_hash", WriteAction.Allow)):  # fmt: skip
        model = "Customer" if required == "password_hash" else "Order"
        wp = WritePolicy(create=create, auto_set={"tenant_id": "principal.tenant_id"}, required_fields=[required])
        models = {**base.models, model: base.models[model].model_copy(update={"write_policy": wp})}
        with pytest.raises(PolicyError, match=f"required_fields names '{required}', which the policy denies"):
            Toolset(shop.Base, Policy(models=models))
    # A masked field can't be sent, so it can't be required on create either.
    masked = {**order.fields, "owner_id": FieldPolicy(action=FieldAction.Mask)}
    wp = WritePolicy(create=WriteAction.Allow, auto_set={"tenant_id": "principal.tenant_id"}, required_fields=["owner_id"])
    models = {**base.models, "Order": order.model_copy(update={"fields": masked, "write_policy": wp})}
    with pytest.raises(PolicyError, match="can't send on create"):
        Toolset(shop.Base, Policy(models=models))
    auto = WritePolicy(create=WriteAction.Allow, auto_set={"tenant_id": "principal.tenant_id", "owner_id": "principal.user_id"},
                       required_fields=["owner_id"])  # fmt: skip
    Toolset(shop.Base, Policy(models={**base.models, "Order": order.model_copy(update={"write_policy": auto})}))


# --- principal values --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [True, False, 1.0, 2.5, Decimal(1), b"acme", ["acme"], ("acme",), {"id": "acme"}, set()])
def test_principal_ids_are_str_or_int(empty_backend: Backend, bad: Any) -> None:
    for field in ("tenant_id", "user_id"):
        with pytest.raises(TypeError, match=f"Principal.{field} must be a str or an int"):
            Principal(**{field: bad})
    with pytest.raises(TypeError):
        Principal(tenant_id="acme", roles=("admin", bad))  # type: ignore[arg-type]


async def test_principals_differing_only_in_value_types_share_nothing(db: Any) -> None:
    toolset = Toolset(Base, policy(), secret_key=KEY)
    one, true, one_float = (Principal(metadata={"org": v}) for v in (1, True, 1.0))
    assert len({one, true, one_float}) == 3 and one != true and one != one_float
    page = await toolset.query(RunContext(one, db), model="Item", limit=2)
    assert [r["org"] for r in page.rows] == [1, 1] and page.next_cursor
    # org 1's clauses are cached for `one`: `True` is not org 1 (a bool is no identity).
    with pytest.raises(AccessDeniedError):
        await toolset.query(RunContext(true, db), model="Item")
    with pytest.raises(InvalidCursorError):
        await toolset.query(RunContext(one_float, db), model="Item", limit=2, cursor=page.next_cursor)
    assert Principal(tenant_id=1) != Principal(tenant_id="1")
    assert hash(Principal(tenant_id="a", metadata={"x": [1, {"y": 2}]})) == hash(Principal(tenant_id="a", metadata={"x": [1, {"y": 2}]}))
    assert Principal(metadata={"since": dt.date(2026, 1, 1)}) == Principal(metadata={"since": dt.date(2026, 1, 1)})


async def test_the_model_is_told_when_a_page_was_truncated(db: Any) -> None:
    from ormai_agents._toolspecs import model_view

    toolset = Toolset(Base, policy(), secret_key=KEY)
    page = await toolset.query(RunContext(ACME, db), model="Entry", limit=4)
    view = model_view(page)
    assert view["truncated"] is True and "next_cursor" not in view and len(view["rows"]) == 4
    assert "truncated" not in model_view(await toolset.query(RunContext(ACME, db), model="Entry"))
