"""The in-memory SQLite trap: each pooled connection to `sqlite://` is its own, empty database.

The adapters open a session per tool call, so on such an engine their tools never see the tables
the application created (`no such table: orders`). They check the factory once, when built.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool

MESSAGE = (
    "the session factory's engine is an in-memory SQLite database whose pool gives each connection its own, "
    "empty database, so the tools would not see your tables: use a file (sqlite:///app.db), or share one "
    'connection: create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})'
)


def private_memory_database(session_factory: Any) -> bool:
    """Whether `session_factory` (a `sessionmaker` / `async_sessionmaker`, or anything with a
    bound engine) opens sessions on an in-memory SQLite database that isn't shared between
    connections. Factories that don't say which engine they use are not judged."""
    kw = getattr(session_factory, "kw", None)
    bind = kw.get("bind") if isinstance(kw, dict) else None
    if isinstance(bind, AsyncEngine):
        bind = bind.sync_engine
    if not isinstance(bind, Engine) or bind.url.get_backend_name() != "sqlite":
        return False
    database = bind.url.database or ""
    in_memory = database in ("", ":memory:") or (database.startswith("file:") and "mode=memory" in database)
    shared_cache = "cache=shared" in database  # a named shared-cache memory database is one database
    return in_memory and not shared_cache and not isinstance(bind.pool, StaticPool)


def check_session_factory(session_factory: Any) -> None:
    """Raise `ValueError` (one line saying what to do) for a private in-memory SQLite database."""
    if private_memory_database(session_factory):
        raise ValueError(MESSAGE)
