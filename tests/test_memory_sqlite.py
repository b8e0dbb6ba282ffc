"""The in-memory SQLite trap: every adapter refuses, in one line, a memory database that each
connection sees empty; a shared one (StaticPool) or a file works."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from ormai_agents import Principal, Toolset
from ormai_agents._memory_sqlite import private_memory_database
from ormai_agents.demo import Base, seed_shop, shop_policy

ACME = Principal(tenant_id="acme", user_id="ann")


def _langchain(toolset: Toolset, factory: Any) -> Any:
    from ormai_agents.langchain import OrmAIToolkit

    return OrmAIToolkit(toolset=toolset, session_factory=factory).get_tools(ACME)


def _llamaindex(toolset: Toolset, factory: Any) -> Any:
    from ormai_agents.llamaindex import OrmAIToolSpec

    return OrmAIToolSpec(toolset=toolset, session_factory=factory).get_tools(ACME)


def _mcp(toolset: Toolset, factory: Any) -> Any:
    from ormai_agents.mcp import create_server

    return create_server(toolset=toolset, session_factory=factory, principal=ACME)


ADAPTERS = [_langchain, _llamaindex, _mcp]


def test_the_trap_is_real() -> None:
    """On `sqlite://` another thread's connection is another, empty database."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    seen: list[bool] = []
    thread = threading.Thread(target=lambda: seen.append(inspect(engine).has_table("orders")))
    thread.start()
    thread.join()
    assert inspect(engine).has_table("orders") and seen == [False]
    engine.dispose()


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda f: f.__name__.strip("_"))
def test_adapters_refuse_a_private_memory_database(adapter: Any) -> None:
    toolset = Toolset(Base, shop_policy())
    for engine in (create_engine("sqlite://"), create_engine("sqlite:///:memory:")):
        with pytest.raises(ValueError) as info:
            adapter(toolset, sessionmaker(engine))
        message = str(info.value)
        assert "\n" not in message and "in-memory SQLite" in message and "StaticPool" in message
        engine.dispose()


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda f: f.__name__.strip("_"))
def test_adapters_accept_shared_memory_and_files(adapter: Any, tmp_path: Path) -> None:
    toolset = Toolset(Base, shop_policy())
    engines = [
        create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}),
        create_engine(f"sqlite:///{tmp_path / 'shop.db'}"),
    ]
    for engine in engines:
        assert adapter(toolset, sessionmaker(engine)) is not None
        engine.dispose()
    memory = create_async_engine("sqlite+aiosqlite://")  # aiosqlite's memory database is one connection
    assert adapter(toolset, async_sessionmaker(memory)) is not None
    asyncio.run(memory.dispose())
    # A factory that doesn't say which engine it uses is not judged.
    assert adapter(toolset, lambda: Session(engines[1])) is not None


def test_a_shared_memory_database_serves_the_tools() -> None:
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        seed_shop(session)
    assert not private_memory_database(sessionmaker(engine))
    query = next(t for t in _langchain(Toolset(Base, shop_policy()), sessionmaker(engine)) if t.name == "query")
    out = query.invoke({"model": "Order", "limit": 2})
    assert "no such table" not in out and '"rows"' in out
    engine.dispose()
