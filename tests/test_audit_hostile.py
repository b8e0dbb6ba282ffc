"""Hostile values in any argument of any call never poison an audit store.

For every store and driver: a generated hostile value goes through the real tools, valid call or
not; then another tenant's write still succeeds and is audited, and the hostile call's own record
is there, readable by `query()` and by `ormai-agents audit`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from typer.testing import CliRunner

from ormai_agents import (
    ModelPolicy,
    OrmAIError,
    Policy,
    Principal,
    RunContext,
    Toolset,
    WriteAction,
    WritePolicy,
)
from ormai_agents.audit import JsonlAuditStore, MemoryAuditStore, SqlAuditStore
from ormai_agents.cli import app
from tests.conftest import ACME, GLOBEX, Backend, pg_url
from tests.hostile_values import hostile_calls

KINDS = ["memory", "jsonl", "sql-sync", "sql-async"]


def note_model(table: str) -> tuple[Any, Any]:
    """A small writable model of its own, in a table of its own (the shared shop stays untouched)."""

    class Base(DeclarativeBase):
        pass

    class Note(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        tenant_id: Mapped[str] = mapped_column(String(40), index=True)
        title: Mapped[str | None] = mapped_column(String(200))
        body: Mapped[str | None] = mapped_column(Text)

    return Base, Note


POLICY = Policy(
    models={
        "Note": ModelPolicy(
            fields={"id": "allow", "tenant_id": "allow", "title": "allow", "body": "allow"},
            scoping={"tenant_id": "principal.tenant_id"},
            write_policy=WritePolicy(
                create=WriteAction.Allow,
                update=WriteAction.Allow,
                delete=WriteAction.Allow,
                bulk_update=WriteAction.Allow,
                auto_set={"tenant_id": "principal.tenant_id"},
            ),
        )
    }
)


def make_store(kind: str, backend: Backend, tmp_path: Path) -> Any:
    if kind == "memory":
        return MemoryAuditStore()
    if kind == "jsonl":
        return JsonlAuditStore(tmp_path / "audit.jsonl")
    engine = backend.sync_engine if kind == "sql-sync" else backend.async_engine
    return SqlAuditStore(engine, table_name=f"audit_{uuid.uuid4().hex[:8]}")  # defaults: writes in the caller's transaction


def cli_store(store: Any, backend: Backend) -> list[str] | None:
    """The `--store` (and table) options that read `store` back, or None for memory."""
    if isinstance(store, JsonlAuditStore):
        return ["--store", f"jsonl:{store.path}"]
    if not isinstance(store, SqlAuditStore):
        return None
    if backend.is_postgres:
        with backend.sync_engine.connect() as conn:
            schema = conn.execute(text("select current_schema()")).scalar_one()
        url = pg_url("psycopg").update_query_dict({"options": f"-csearch_path={schema}"})
    else:
        url = backend.sync_engine.url
    return ["--store", f"sql:{url.render_as_string(hide_password=False)}", "--table-name", store.table.name]


@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning", "ignore::hypothesis.errors.HypothesisWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_hostile_values_never_poison_a_store(shop_backend: Backend, tmp_path: Path, kind: str) -> None:
    base, _ = note_model(f"notes_{uuid.uuid4().hex[:8]}")
    base.metadata.create_all(shop_backend.sync_engine)
    store = make_store(kind, shop_backend, tmp_path)
    toolset = Toolset(base, POLICY, store, secret_key=b"h" * 32)
    loop = asyncio.new_event_loop()
    if isinstance(store, SqlAuditStore):
        loop.run_until_complete(store.create_table())
    ids = itertools.count()
    use_async = kind == "sql-async"

    async def call(principal: Principal, tool: str, kwargs: dict[str, Any], request_id: str) -> Any:
        if use_async:
            async with shop_backend.async_session() as db:
                return await getattr(toolset, tool)(RunContext(principal, db, request_id=request_id), **kwargs)
        with shop_backend.session() as sdb:
            return await getattr(toolset, tool)(RunContext(principal, sdb, request_id=request_id), **kwargs)

    async def attack(tool: str, kwargs: dict[str, Any]) -> None:
        rid = f"hostile-{next(ids)}"
        try:
            await call(ACME, tool, kwargs, rid)
        except OrmAIError:
            pass  # refused or failed: audited all the same
        # Another tenant's write still succeeds and is audited.
        created = await call(GLOBEX, "create", {"model": "Note", "data": {"title": "ok", "body": rid}}, f"{rid}-globex")
        (theirs,) = await store.query(tenant_id="globex", tool_name="create", limit=1)
        assert (theirs.outcome, theirs.request_id, theirs.after) == ("success", f"{rid}-globex", created.data)
        # The hostile call's own record is there, and strict JSON.
        (mine,) = await store.query(tenant_id="acme", limit=1)
        assert (mine.request_id, mine.tool_name) == (rid, tool)
        json.dumps(mine.to_dict(), allow_nan=False).encode("utf-8")

    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])  # fmt: skip
    @given(hostile_calls())
    def check(case: tuple[str, dict[str, Any]]) -> None:
        loop.run_until_complete(attack(*case))

    try:
        check()
        examples = next(ids)
        records = loop.run_until_complete(store.query(tenant_id="acme", limit=100_000))
        assert sorted(r.request_id for r in records) == sorted(f"hostile-{i}" for i in range(examples))
        # The records the toolset builds need no fallback: the sanitizer made them storable.
        assert (getattr(store, "dead_letters", 0), getattr(store, "fallbacks", 0)) == (0, 0)
        loop.run_until_complete(store.aclose())
        options = cli_store(store, shop_backend)
        if options is not None:
            runner = CliRunner()
            out = runner.invoke(app, ["audit", *options, "--tenant", "acme", "--limit", "100000", "--json"])
            assert out.exit_code == 0, out.output
            lines = out.output.splitlines()  # ensure_ascii JSON: no character splitlines() splits on
            assert sorted(json.loads(line)["request_id"] for line in lines) == sorted(r.request_id for r in records)
            table = runner.invoke(app, ["audit", *options, "--tenant", "acme", "--limit", "100000"], env={"COLUMNS": "400"})
            assert table.exit_code == 0, table.output
            assert f"{examples} audit record(s)" in table.output
            assert not any(c in table.output for c in "\x1b\x07\x00\x85\u2028\u2029\u202e")
        if isinstance(store, JsonlAuditStore):
            raw = store.path.read_bytes()
            assert raw.count(b"\n") == 2 * examples  # one line per record, nothing split
            assert not any(c.encode() in raw for c in "\u2028\u2029\x85\x7f")
    finally:
        base.metadata.drop_all(shop_backend.sync_engine)
        if isinstance(store, SqlAuditStore):
            store.table.drop(shop_backend.sync_engine, checkfirst=True)
        loop.close()
