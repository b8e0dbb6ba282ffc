"""The database truth: unscoped statements run on the test's own session, sync or async; and the
statements the toolset sends, as the driver receives them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession


async def rows(db: Any, stmt: Any) -> list[Any]:
    """All rows of a statement, on a Session or an AsyncSession."""
    if isinstance(db, AsyncSession):
        return list((await db.execute(stmt)).all())
    return list(db.execute(stmt).all())


async def scalars(db: Any, stmt: Any) -> list[Any]:
    """The first column of every row."""
    return [r[0] for r in await rows(db, stmt)]


async def walk(toolset: Any, ctx: Any, model: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Every row of a query, following next_cursor to the last page."""
    out: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10_000):
        page = await toolset.query(ctx, model=model, cursor=cursor, **kwargs)
        out += page.rows
        cursor = page.next_cursor
        if cursor is None:
            return out
    raise AssertionError("pagination did not end")


@contextmanager
def captured(backend: Any, tables: str = "orders|customers|tenants") -> Iterator[list[tuple[str, list[Any]]]]:
    """(statement, parameter values) of every statement on `tables` while the block runs."""
    out: list[tuple[str, list[Any]]] = []

    def listen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if re.search(rf"\b({tables})\b", statement):
            values = list(parameters.values()) if isinstance(parameters, dict) else list(parameters or ())
            out.append((statement, values))

    engines = [backend.sync_engine, backend.async_engine.sync_engine]
    for engine in engines:
        event.listen(engine, "before_cursor_execute", listen)
    try:
        yield out
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", listen)
