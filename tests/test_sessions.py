"""`open_session`: one session per adapter tool call, committed on success, rolled back on failure."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from ormai_agents._sessions import open_session
from tests import shop
from tests.conftest import BACKENDS, Backend


async def _run(db: Any, stmt: Any) -> Any:
    return (await db.execute(stmt)) if isinstance(db, AsyncSession) else db.execute(stmt)


@pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("kind", ["sync", "async", "awaitable"])
async def test_commit_rollback_close(empty_backend: Backend, kind: str) -> None:
    shop.Base.metadata.create_all(empty_backend.sync_engine)
    made: list[Any] = []
    if kind == "sync":
        inner: Any = sessionmaker(empty_backend.sync_engine)
    else:
        inner = async_sessionmaker(empty_backend.async_engine)

    def factory() -> Any:
        made.append(inner())
        if kind == "awaitable":
            async def later() -> Any:
                return made[-1]
            return later()
        return made[-1]

    insert = shop.Tenant.__table__.insert()
    async with open_session(factory) as db:
        await _run(db, insert.values(id="kept", name="Kept"))
    with pytest.raises(RuntimeError):
        async with open_session(factory) as db:
            await _run(db, insert.values(id="dropped", name="Dropped"))
            raise RuntimeError("tool failed")
    with Session(empty_backend.sync_engine) as s:
        assert s.scalars(select(shop.Tenant.id)).all() == ["kept"]
        assert s.scalar(select(func.count()).select_from(shop.Tenant)) == 1
    sync = [m if isinstance(m, Session) else m.sync_session for m in made]
    assert len(sync) == 2 and not any(s.in_transaction() for s in sync)


async def test_factory_must_make_a_session() -> None:
    with pytest.raises(TypeError):
        async with open_session(lambda: object()):
            pass
