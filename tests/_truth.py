"""The database truth: unscoped statements run on the test's own session, sync or async."""

from __future__ import annotations

from typing import Any

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
