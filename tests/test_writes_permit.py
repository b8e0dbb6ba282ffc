"""A permit row policy widens what the agent may read, never what it may change."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from ormai_agents import (
    FieldAction,
    ModelPolicy,
    Policy,
    RecordNotFoundError,
    RowPolicy,
    RunContext,
    WriteAction,
    WritePolicy,
)
from tests import shop
from tests.conftest import ACME, BACKENDS, Backend
from tests.writes_support import snapshot, toolset

pytestmark = pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)


def _policy() -> Policy:
    return Policy(
        models={
            "Document": ModelPolicy(
                fields={"id": FieldAction.Allow, "tenant_id": FieldAction.Allow, "is_public": FieldAction.Allow,
                        "title": FieldAction.Allow},  # fmt: skip
                scoping={"tenant_id": "principal.tenant_id"},
                row_policies=[RowPolicy("public", "is_public = true", mode="permit")],
                write_policy=WritePolicy(
                    create=WriteAction.Allow, update=WriteAction.Allow, delete=WriteAction.Allow,
                    bulk_update=WriteAction.Allow, auto_set={"tenant_id": "principal.tenant_id"},
                    max_affected_rows=100,
                ),  # fmt: skip
            )
        }
    )


async def _foreign_public(backend: Backend) -> int:
    with backend.sync_engine.connect() as conn:
        t = shop.Document.__table__
        ids = conn.execute(select(t.c.id).where(t.c.tenant_id != "acme", t.c.is_public.is_(True))).scalars().all()
    assert ids, "the seed must hold another tenant's public document"
    return ids[0]


async def test_permit_rows_are_readable_not_writable(wb: Backend, wdb: Any) -> None:
    tools = toolset(_policy())
    ctx = RunContext(ACME, wdb)
    foreign = await _foreign_public(wb)
    seen = await tools.get(ctx, model="Document", id=foreign)  # readable through the permit
    assert seen.data["tenant_id"] != "acme"
    before = snapshot(wb, shop.Document)
    with pytest.raises(RecordNotFoundError) as updating:
        await tools.update(ctx, model="Document", id=foreign, data={"title": "defaced"})
    with pytest.raises(RecordNotFoundError) as deleting:
        await tools.delete(ctx, model="Document", id=foreign)
    with pytest.raises(RecordNotFoundError) as missing:
        await tools.update(ctx, model="Document", id=987_654, data={"title": "x"})
    assert str(updating.value) == str(deleting.value) == str(missing.value)
    result = await tools.bulk_update(
        ctx, model="Document", filters=[{"field": "is_public", "op": "eq", "value": True}], data={"title": "mine"}
    )
    # The get above began a transaction, so the writes ran in savepoints: the commit is ours.
    done = wdb.commit()
    if done is not None:
        await done
    after = snapshot(wb, shop.Document)
    changed = [b for b, a in zip(before, after) if a != b]
    assert result.data["updated_count"] == len(changed)
    assert all(row[1] == "acme" for row in changed)  # (id, tenant_id, ...): only acme's rows changed
    assert {a[0] for a in after} == {b[0] for b in before}
