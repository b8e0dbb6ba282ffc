"""Helpers of the write-path tests: a writable shop policy, a toolset on it, and the committed
truth read from a separate connection. The fixtures (`wb`, `wdb`, `wdb1`) live in conftest.py."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from ormai_agents import Policy, RowPolicy, Toolset, WriteAction, WritePolicy
from tests import shop
from tests.conftest import Backend

SECRET = b"w" * 32


def write_policy(
    order: WriteAction = WriteAction.Allow,
    *,
    max_affected_rows: int = 5,
    order_ops: dict[str, WriteAction] | None = None,
) -> Policy:
    """The shop policy with writes: Order and Customer writable, Tenant creatable (for unique errors)."""
    base = shop.shop_policy()
    ops = {"create": order, "update": order, "delete": order, "bulk_update": order, **(order_ops or {})}
    models = dict(base.models)
    models["Order"] = base.models["Order"].model_copy(
        update={
            "write_policy": WritePolicy(
                **ops,
                auto_set={"tenant_id": "principal.tenant_id", "owner_id": "principal.user_id", "created_at": "now()"},
                immutable_fields=["customer_id"],
                required_fields=["total"],
                max_affected_rows=max_affected_rows,
            ),
            "row_policies": [RowPolicy("small_quantity", "quantity IS NULL OR quantity < 100")],
        }
    )
    models["Customer"] = base.models["Customer"].model_copy(
        update={
            "write_policy": WritePolicy(
                create=WriteAction.Allow, update=WriteAction.Allow, auto_set={"tenant_id": "principal.tenant_id"}
            )
        }
    )
    models["Tenant"] = base.models["Tenant"].model_copy(
        update={"write_policy": WritePolicy(create=WriteAction.Allow, auto_set={"id": "principal.tenant_id"})}
    )
    return Policy(models=models)


def toolset(policy: Policy | None = None, **kwargs: Any) -> Toolset:
    kwargs.setdefault("secret_key", SECRET)
    return Toolset(shop.Base, policy or write_policy(), **kwargs)


def snapshot(backend: Backend, model: Any) -> list[tuple[Any, ...]]:
    """Every committed row of `model`, as seen from a separate connection."""
    table = model.__table__
    with backend.sync_engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns))]


def count(backend: Backend, model: Any, *where: Any) -> int:
    with backend.sync_engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def ids(backend: Backend, model: Any, *where: Any) -> list[Any]:
    with backend.sync_engine.connect() as conn:
        return list(conn.execute(select(model.id).where(*where).order_by(model.id)).scalars())
