"""Differential test: random interleaved writes by several tenants against a row-by-row oracle.

Each example runs a sequence of create, update, delete and bulk_update calls by two principals
and two look-alikes of the first (`ACME`, `acme `: the same tenant to a folding collation),
aimed at their own rows, each other's rows, NULL- and empty-tenant rows and missing ids, on a
fresh copy of the hostile seed. A plain-Python model of the policy (exact tenant scope, the
`quantity IS NULL OR quantity < 100` restrict policy as WITH CHECK, the bulk limit) predicts every
outcome; the database must end up exactly as predicted. Every backend, sync and async sessions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, insert, select

from ormai_agents import OrmAIError, Principal, RecordNotFoundError, RunContext, ValidationError, WriteNotAllowedError
from tests import shop
from tests.conftest import ACME, BACKENDS, GLOBEX, Backend, make_backend
from tests.writes_support import toolset

Order = shop.Order
SEED = [r for r in shop.seed_rows() if isinstance(r, Order)]
IDS = [o.id for o in SEED] + [10_000]
TS = toolset()
LIMIT = 5  # write_policy()'s max_affected_rows

# Look-alikes of acme: a folding collation would give them acme's rows.
LOOK_ALIKES = [Principal(tenant_id="ACME", user_id="u1"), Principal(tenant_id="acme ", user_id="u1")]
principals = st.sampled_from([ACME, GLOBEX, *LOOK_ALIKES])
quantities = st.sampled_from([None, 0, 7, 99, 100, 500])
statuses = st.sampled_from(["a", "b%_", "ünï"])
acme_or_globex = [o.id for o in SEED if o.tenant_id in ("acme", "globex")]
targets = st.one_of(st.sampled_from(IDS), st.sampled_from(acme_or_globex))
ops = st.one_of(
    st.tuples(st.just("create"), principals, statuses, quantities),
    st.tuples(st.just("update"), principals, targets, statuses, quantities),
    st.tuples(st.just("delete"), principals, targets),
    st.tuples(st.just("bulk_update"), principals, st.lists(targets, min_size=1, max_size=8, unique=True), quantities),
)


def allowed(row: dict[str, Any]) -> bool:
    return row["quantity"] is None or row["quantity"] < 100


def visible(model: dict[int, dict[str, Any]], principal: Any, oid: int) -> bool:
    row = model.get(oid)
    return row is not None and row["tenant_id"] == principal.tenant_id and allowed(row)


@pytest.fixture(scope="module", params=BACKENDS)
def oracle_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """The shop's tables with its customers; each example puts the seeded orders back."""
    backend, cleanup = make_backend(request.param, tmp_path_factory.mktemp("writes-oracle"))
    shop.Base.metadata.create_all(backend.sync_engine)
    customers = [r for r in shop.seed_rows() if isinstance(r, shop.Customer)]
    with backend.sync_engine.begin() as conn:
        conn.execute(
            insert(shop.Customer.__table__),
            [{c.key: getattr(r, c.key) for c in shop.Customer.__table__.columns} for r in customers],
        )
    yield backend
    cleanup()


def reset(backend: Backend) -> None:
    with backend.sync_engine.begin() as conn:
        conn.execute(delete(Order.__table__))
        conn.execute(
            insert(Order.__table__), [{c.key: getattr(o, c.key) for c in Order.__table__.columns} for o in SEED]
        )
        if backend.is_postgres:  # the seed sets ids explicitly: move the sequence past them
            conn.execute(select(func.setval(func.pg_get_serial_sequence("orders", "id"), max(o.id for o in SEED))))


@asynccontextmanager
async def session(backend: Backend, kind: str) -> AsyncIterator[Any]:
    if kind == "async":
        async with backend.async_session() as db:
            yield db
    else:
        with backend.session() as sdb:
            yield sdb


async def run(backend: Backend, kind: str, sequence: list[tuple[Any, ...]]) -> None:
    reset(backend)
    model = {o.id: {"tenant_id": o.tenant_id, "status": o.status, "quantity": o.quantity} for o in SEED}
    async with session(backend, kind) as db:
        for op in sequence:
            kind, principal = op[0], op[1]
            ctx = RunContext(principal, db)
            if kind == "create":
                new = {"tenant_id": principal.tenant_id, "status": op[2], "quantity": op[3]}
                if allowed(new):
                    result = await TS.create(ctx, "Order", {"total": 1, "status": op[2], "quantity": op[3]})
                    model[result.data["id"]] = new
                else:
                    await expect(
                        WriteNotAllowedError, TS.create(ctx, "Order", {"total": 1, "status": op[2], "quantity": op[3]})
                    )
            elif kind == "update":
                oid, change = op[2], {"status": op[3], "quantity": op[4]}
                call = TS.update(ctx, "Order", oid, change)
                if not visible(model, principal, oid):
                    await expect(RecordNotFoundError, call)
                elif not allowed({**model[oid], **change}):
                    await expect(WriteNotAllowedError, call)
                else:
                    result = await call
                    assert result.data["tenant_id"] == principal.tenant_id
                    model[oid].update(change)
            elif kind == "delete":
                oid = op[2]
                if visible(model, principal, oid):
                    await TS.delete(ctx, "Order", oid)
                    del model[oid]
                else:
                    await expect(RecordNotFoundError, TS.delete(ctx, "Order", oid))
            else:
                chosen, quantity = op[2], op[3]
                call = TS.bulk_update(
                    ctx, "Order", [{"field": "id", "op": "in", "value": chosen}], {"quantity": quantity}
                )
                matched = [oid for oid in chosen if visible(model, principal, oid)]
                if len(matched) > LIMIT:
                    await expect(ValidationError, call)
                elif matched and not allowed({"quantity": quantity}):
                    await expect(WriteNotAllowedError, call)
                else:
                    assert (await call).data == {"updated_count": len(matched)}
                    for oid in matched:
                        model[oid]["quantity"] = quantity
    with backend.sync_engine.connect() as conn:
        rows = conn.execute(select(Order.id, Order.tenant_id, Order.status, Order.quantity)).all()
    assert {r[0]: {"tenant_id": r[1], "status": r[2], "quantity": r[3]} for r in rows} == model


async def expect(error: type[OrmAIError], call: Any) -> None:
    try:
        await call
    except error:
        return
    raise AssertionError(f"expected {error.__name__}")


@pytest.mark.parametrize("kind", ["sync", "async"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=st.lists(ops, min_size=1, max_size=12))
def test_interleaved_writes_match_the_oracle(
    oracle_backend: Backend, kind: str, sequence: list[tuple[Any, ...]]
) -> None:
    asyncio.run(run(oracle_backend, kind, sequence))


def test_the_oracle_is_neither_empty_nor_total() -> None:
    # Both principals own rows, and most rows belong to neither: the attacks have targets.
    model = {o.id: {"tenant_id": o.tenant_id, "quantity": o.quantity} for o in SEED}
    for principal in (ACME, GLOBEX):
        mine = [oid for oid in model if visible(model, principal, oid)]  # type: ignore[arg-type]
        assert 0 < len(mine) < len(model) // 2
