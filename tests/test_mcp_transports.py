"""`ormai-agents mcp` as a subprocess, through the official `mcp` client: stdio with one
principal, and streamable HTTP on 127.0.0.1 with two tenants' tokens calling at once.

Results are checked against the database; the audit file the server writes is checked too.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from ormai_agents import page_records
from ormai_agents.demo import Base, Order, seed_shop

pytestmark = pytest.mark.slow  # every test here starts the server as a subprocess

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "examples" / "shop_policy.yaml"
TOKENS = {"acme-token-1f6c0e9a7d": {"tenant_id": "acme", "user_id": "ann"}, "globex-token-83b2d4c51e": {"tenant_id": "globex", "user_id": "gus"}}
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def shop_db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "shop.db"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        seed_shop(s)
    engine.dispose()
    yield path


def truth(db: Path, tenant: str) -> list[int]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with Session(engine) as s:
            return list(s.scalars(select(Order.id).where(Order.tenant_id == tenant).order_by(Order.id)))
    finally:
        engine.dispose()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ormai_agents.cli", "mcp", "--policy", str(POLICY), "--models", "ormai_agents.demo:Base", *args]


def body(result: types.CallToolResult) -> Any:
    (content,) = result.content
    assert isinstance(content, types.TextContent)
    return json.loads(content.text)


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_stdio_serves_the_one_principal(shop_db: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    command = cli("--db", f"sqlite:///{shop_db}", "--principal", json.dumps(TOKENS["globex-token-83b2d4c51e"]), "--audit", f"jsonl:{audit}")
    params = StdioServerParameters(command=command[0], args=command[1:], cwd=str(ROOT), env=ENV)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        names = [t.name for t in (await client.list_tools()).tools]
        rows = await client.call_tool("query", {"model": "Order", "select": ["id", "tenant_id"], "order_by": ["id"]})
        claimed = await client.call_tool("query", {"model": "Order", "tenant_id": "acme"})
        foreign = await client.call_tool("get", {"model": "Order", "id": truth(shop_db, "acme")[0]})
    assert names == ["describe_schema", "query", "get", "aggregate", "create_order"]
    assert [r["id"] for r in page_records(body(rows))] == truth(shop_db, "globex")
    assert claimed.isError and body(claimed)["error"] == "validation_error" and "acme" not in str(body(claimed))
    assert foreign.isError and body(foreign)["error"] == "not_found"
    records = audit_lines(audit)
    assert [(r["tool_name"], r["error_code"], r["tenant_id"], r["user_id"]) for r in records] == [
        ("query", None, "globex", "gus"),
        ("query", "validation_error", "globex", "gus"),
        ("get", "not_found", "globex", "gus"),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server(shop_db: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    audit = tmp_path / "audit.jsonl"
    port = _free_port()
    command = cli("--db", f"sqlite+aiosqlite:///{shop_db}", "--transport", "streamable-http", "--host", "127.0.0.1",
                  "--port", str(port), "--tokens", str(tokens), "--audit", f"jsonl:{audit}")  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the server did not start: {proc.stderr.read() if proc.stderr else ''}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp", audit
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


async def test_streamable_http_two_tenants_at_once(shop_db: Path, http_server: tuple[str, Path]) -> None:
    url, audit = http_server
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    async with httpx.AsyncClient(timeout=10) as http:
        for auth in ({}, {"Authorization": "Bearer wrong-token-0000000000"}, {"Authorization": "Basic acme-token-1f6c0e9a7d"}):
            refused = await http.post(url, json=initialize, headers={**headers, **auth})
            assert refused.status_code == 401 and "Bearer" in refused.headers["www-authenticate"]
            assert "acme" not in refused.text
        # A valid token from a page whose name resolved to this machine (DNS rebinding): refused.
        auth = {"Authorization": "Bearer acme-token-1f6c0e9a7d"}
        for spoofed in ({"Host": "rebind.example"}, {"Origin": "http://rebind.example"}):
            rebound = await http.post(url, json=initialize, headers={**headers, **auth, **spoofed})
            assert rebound.status_code in (421, 403), spoofed

    async def tenant_calls(token: str) -> tuple[str, list[types.CallToolResult]]:
        tenant = TOKENS[token]["tenant_id"]
        http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
        async with http, streamable_http_client(url, http_client=http) as (read, write, _), ClientSession(read, write) as client:
            await client.initialize()
            calls = [
                client.call_tool("query", {"model": "Order", "select": ["id", "tenant_id"], "order_by": ["id"]})
                if i % 2 == 0 else client.call_tool("aggregate", {"model": "Order", "group_by": ["tenant_id"]})
                for i in range(8)
            ]  # fmt: skip
            return tenant, list(await asyncio.gather(*calls))

    results = await asyncio.gather(*(tenant_calls(t) for t in TOKENS))
    for tenant, outs in results:
        expected = truth(shop_db, tenant)
        for i, out in enumerate(outs):
            assert not out.isError
            if i % 2 == 0:
                assert [r["id"] for r in page_records(body(out))] == expected
                assert {r["tenant_id"] for r in page_records(body(out))} == {tenant}
            else:
                assert body(out) == {"groups": [{"tenant_id": tenant, "value": len(expected)}]}

    # An MCP session answers only the token that opened it (the SDK binds the two).
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "query", "arguments": {"model": "Order"}}}
    async with httpx.AsyncClient(timeout=10) as http:
        opened = await http.post(url, json=initialize, headers={**headers, "Authorization": "Bearer acme-token-1f6c0e9a7d"})
        acme_session = opened.headers["mcp-session-id"]
        hijack = await http.post(url, json=call, headers={**headers, "Authorization": "Bearer globex-token-83b2d4c51e",
                                                          "mcp-session-id": acme_session})  # fmt: skip
        assert hijack.status_code == 404 and "acme" not in hijack.text
        # Arguments that are not an object (no SDK client would send them; a raw HTTP client
        # can): answered by our layer as a tool error, audited under the token's principal.
        session = {**headers, "Authorization": "Bearer globex-token-83b2d4c51e"}
        opened = await http.post(url, json=initialize, headers=session)
        session["mcp-session-id"] = opened.headers["mcp-session-id"]
        await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
        raw = {**call, "id": 3, "params": {"name": "query", "arguments": ["Order", "tenant_id=acme"]}}
        answer = await http.post(url, json=raw, headers=session)
    (data,) = [line.removeprefix("data:") for line in answer.text.splitlines() if line.startswith("data:")]
    result = json.loads(data)["result"]
    assert result["isError"] is True and json.loads(result["content"][0]["text"])["error"] == "validation_error"
    assert "acme" not in answer.text
    records = audit_lines(audit)
    refused = records.pop()
    assert (refused["tool_name"], refused["error_code"], refused["tenant_id"], refused["user_id"]) == (
        "query", "validation_error", "globex", "gus",
    )  # fmt: skip
    assert sorted((r["tenant_id"], r["user_id"]) for r in records) == sorted([("acme", "ann")] * 8 + [("globex", "gus")] * 8)
    assert all(r["scopes_injected"] == [f"tenant_id = '{r['tenant_id']}'"] for r in records)
