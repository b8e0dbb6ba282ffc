"""One session per adapter tool call, from the host's sync or async session factory."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from ormai_agents._context import DB
from ormai_agents._db import DbHandle
from ormai_agents._dberrors import map_db_errors

log = logging.getLogger("ormai_agents")

SessionFactory = Callable[[], Any]


@asynccontextmanager
async def open_session(factory: SessionFactory) -> AsyncIterator[DB]:
    """A fresh session from `factory` (a `sessionmaker`, an `async_sessionmaker`, or any callable
    returning a Session/AsyncSession, possibly as an awaitable).

    Committed when the block ends normally, rolled back when it raises, closed either way, so a
    tool call never leaves a transaction or connection behind.
    """
    db = factory()
    if inspect.isawaitable(db):
        db = await db
    try:
        handle = DbHandle(db)
    except TypeError:
        raise TypeError("session_factory must return a SQLAlchemy Session or AsyncSession") from None

    async def finish(method: str) -> None:
        await getattr(handle, method)()

    try:
        yield db
        with map_db_errors("commit"):
            await finish("commit")
    except BaseException:
        try:
            await finish("rollback")
        except Exception:  # the original failure is what the caller needs to see
            log.warning("ormai_agents: rollback after a failed tool call failed", exc_info=True)
        raise
    finally:
        try:
            await finish("close")
        except Exception:
            log.warning("ormai_agents: closing a tool call's session failed", exc_info=True)
