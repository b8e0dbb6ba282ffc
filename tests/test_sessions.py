"""`open_session`: one session per adapter tool call, committed on success, rolled back on failure."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from ormai_agents import RunContext
from ormai_agents._db import engine_of
from ormai_agents._sessions import open_session
from tests import shop
from tests.conftest import ACME, BACKENDS, Backend


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


@pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("kind", ["session", "async_session", "connection", "async_connection"])
async def test_every_handle_kind_reaches_its_engine(empty_backend: Backend, kind: str) -> None:
    """`engine_of` is the one dispatch from a handle to its engine (the audit store's same-database
    check and the collation probe's cache reset both use it); RunContext takes exactly these kinds."""
    sync = empty_backend.sync_engine
    if kind == "session":
        with Session(sync) as s:
            assert engine_of(s) is sync
            RunContext(ACME, s)
    elif kind == "connection":
        with sync.connect() as c:
            assert engine_of(c) is sync
            RunContext(ACME, c)
    elif kind == "async_session":
        async with AsyncSession(empty_backend.async_engine) as a:
            assert engine_of(a) is empty_backend.async_engine.sync_engine
            RunContext(ACME, a)
    else:
        async with empty_backend.async_engine.connect() as ac:
            assert engine_of(ac) is empty_backend.async_engine.sync_engine
            RunContext(ACME, ac)


def test_anything_else_is_no_handle() -> None:
    assert engine_of(object()) is None
    assert engine_of(Session()) is None  # no bind: no guess
    with pytest.raises(TypeError):
        RunContext(ACME, object())  # type: ignore[arg-type]
