"""`ormai-agents audit`: a tenant's records from the JSONL and SQL stores, newest first.

The tests are sync: the command runs its own event loop, as it does from a shell.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from ormai_agents import Principal, RecordNotFoundError, RunContext, Toolset
from ormai_agents.audit import JsonlAuditStore, SqlAuditStore
from ormai_agents.cli import app
from tests import shop
from tests.conftest import Backend, pg_url

runner = CliRunner()


async def _calls(store: Any, backend: Backend) -> None:
    """Two tenants' calls: successes, a cross-tenant get, a denied field."""
    toolset = Toolset(shop.Base, shop.shop_policy(), audit_store=store)
    with backend.session() as session:
        for tenant, user in (("acme", "ann"), ("globex", "gus"), ("acme", "bob")):
            ctx = RunContext(principal=Principal(tenant_id=tenant, user_id=user), db=session)
            await toolset.query(ctx, model="Order", limit=3)
            with pytest.raises(RecordNotFoundError):
                await toolset.get(ctx, model="Order", id=10_000)
        await toolset.aggregate(RunContext(principal=Principal(tenant_id="acme", user_id="ann"), db=session), model="Order")
    await store.aclose()


def _records(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_audit_from_a_jsonl_store(shop_backend: Backend, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    asyncio.run(_calls(JsonlAuditStore(path), shop_backend))

    result = runner.invoke(app, ["audit", "--store", f"jsonl:{path}", "--tenant", "acme", "--json"])
    assert result.exit_code == 0, result.output
    records = _records(result.output)
    assert len(records) == 5 and {r["tenant_id"] for r in records} == {"acme"}
    assert records[0]["tool_name"] == "aggregate"  # newest first
    assert [r["timestamp"] for r in records] == sorted((r["timestamp"] for r in records), reverse=True)
    assert all(r["scopes_injected"] == ["tenant_id = 'acme'"] for r in records)
    assert [r["error_code"] for r in records].count(RecordNotFoundError.code) == 2

    result = runner.invoke(app, ["audit", "--store", f"jsonl:{path}", "--tenant", "acme", "--user", "bob", "--json"])
    assert {r["user_id"] for r in _records(result.output)} == {"bob"} and len(_records(result.output)) == 2
    result = runner.invoke(app, ["audit", "--store", f"jsonl:{path}", "--tenant", "acme", "--tool", "get", "--limit", "1", "--json"])
    assert [r["tool_name"] for r in _records(result.output)] == ["get"]

    table = runner.invoke(app, ["audit", "--store", f"jsonl:{path}", "--tenant", "globex"])
    assert table.exit_code == 0 and "2 audit record(s)" in table.output and "tenant_id = 'globex'" in table.output
    assert "acme" not in table.output
    # Each row shows its date and time, not only the time of day.
    globex = _records(runner.invoke(app, ["audit", "--store", f"jsonl:{path}", "--tenant", "globex", "--json"]).output)
    for record in globex:
        stamp = datetime.fromisoformat(record["timestamp"])
        assert stamp.strftime("%Y-%m-%d %H:%M:%S") in table.output, (stamp, table.output)
    assert "No audit records" in runner.invoke(app, ["audit", "--store", f"jsonl:{path}", "--tenant", "initech"]).output
    missing = runner.invoke(app, ["audit", "--store", f"jsonl:{tmp_path / 'nope.jsonl'}", "--tenant", "acme"])
    assert missing.exit_code == 2 and "no audit file" in missing.output
    assert runner.invoke(app, ["audit", "--store", "csv:x", "--tenant", "acme"]).exit_code == 2


def test_audit_from_a_sql_store(shop_backend: Backend, tmp_path: Path) -> None:
    if shop_backend.is_postgres:
        with shop_backend.sync_engine.connect() as conn:
            schema = conn.execute(text("select current_schema()")).scalar_one()
        url = pg_url("psycopg").update_query_dict({"options": f"-csearch_path={schema}"})
        store_url = url.render_as_string(hide_password=False)
        engine = shop_backend.sync_engine
    elif shop_backend.is_mysql:
        store_url = shop_backend.sync_engine.url.render_as_string(hide_password=False)
        engine = shop_backend.sync_engine
    else:
        from sqlalchemy import create_engine

        store_url = f"sqlite:///{tmp_path / 'audit.db'}"
        engine = create_engine(store_url)
    store = SqlAuditStore(engine, table_name=f"audit_{tmp_path.name[-8:].replace('-', '_')}")
    asyncio.run(store.create_table())
    asyncio.run(_calls(store, shop_backend))

    args = ["audit", "--store", f"sql:{store_url}", "--table-name", store.table.name, "--tenant", "globex", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = _records(result.output)
    assert [r["tool_name"] for r in records] == ["get", "query"]
    assert {r["tenant_id"] for r in records} == {"globex"} and records[0]["error_code"] == RecordNotFoundError.code

    missing = runner.invoke(app, ["audit", "--store", f"sql:{store_url}", "--table-name", "no_such_table", "--tenant", "acme"])
    assert missing.exit_code == 2 and "no audit table" in missing.output
