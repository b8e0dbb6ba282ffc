"""What the MCP server adds to a tool call, against raw SQLAlchemy in the same run.

    python -m benchmarks.bench_mcp                   # in memory and over HTTP, -n 1000
    python -m benchmarks.bench_mcp -n 300 --no-http

The demo shop (ormai_agents.demo) in a temporary SQLite file; the call is acme's pending orders
(`query`, status = pending, limit 50). Each round runs, in rotating order:

- raw: the same statement with SQLAlchemy Core (scope and filter written by hand) in a session
  opened and closed around it;
- kernel: the adapter kernel (`ToolRunner.call`): a session per call, the toolset, JSON text;
- mcp: `ClientSession.call_tool` through the SDK's in-memory transport to `create_server(...)`,
  which is the kernel plus the protocol (JSON-RPC, pydantic models, two memory streams).

With HTTP, the server also runs on 127.0.0.1 (uvicorn, async SQLite driver) and two clients with
two tenants' tokens send calls: one at a time (latency, beside an MCP ping, which is the
transport alone), then 8 at once each (throughput).
Prints medians in µs and median ratios to raw.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from ormai_agents import Principal, Toolset
from ormai_agents.demo import PRINCIPALS, Base, Order, seed_shop, shop_policy

ARGS = {"model": "Order", "filters": [{"field": "status", "op": "eq", "value": "pending"}], "limit": 50}
TOKENS = {"acme-bench-token-0123456789": PRINCIPALS["acme"], "globex-bench-token-0123456789": PRINCIPALS["globex"]}


def seed(path: Path) -> None:
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        seed_shop(s)
    engine.dispose()


async def in_memory(n: int, path: Path) -> dict[str, float]:
    from mcp.shared.memory import create_connected_server_and_client_session

    from ormai_agents._kernel import ToolRunner
    from ormai_agents._toolspecs import build_tool_specs
    from ormai_agents.mcp import create_server

    engine = create_engine(f"sqlite:///{path}")
    factory = sessionmaker(engine)
    toolset = Toolset(Base, shop_policy())
    principal = PRINCIPALS["acme"]
    runner = ToolRunner(toolset, factory)
    spec = next(s for s in build_tool_specs(toolset) if s.name == "query")
    columns = [Order.id, Order.tenant_id, Order.user_id, Order.status, Order.total, Order.created_at]
    stmt = select(*columns).where(Order.tenant_id == "acme", Order.status == "pending").order_by(Order.id).limit(51)
    server = create_server(toolset=toolset, session_factory=factory, principal=principal)
    names = ("raw", "kernel", "mcp")
    times: dict[str, list[float]] = {k: [] for k in names}
    async with create_connected_server_and_client_session(server) as client:
        for i in range(n + 50):
            took = {}
            for which in names[i % 3 :] + names[: i % 3]:
                start = time.perf_counter()
                if which == "raw":
                    with factory() as db:
                        db.execute(stmt).all()
                        db.commit()
                elif which == "kernel":
                    assert not (await runner.call(spec, principal, ARGS)).is_error
                else:
                    assert not (await client.call_tool("query", ARGS)).isError
                took[which] = time.perf_counter() - start
            if i >= 50:
                for k in names:
                    times[k].append(took[k])
    engine.dispose()
    out = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    out["kernel/raw"] = statistics.median(b / a for a, b in zip(times["raw"], times["kernel"]))
    out["mcp/raw"] = statistics.median(b / a for a, b in zip(times["raw"], times["mcp"]))
    return out


async def over_http(n: int, path: Path) -> dict[str, float]:
    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from ormai_agents.mcp import create_server

    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")

    def resolve(token: str) -> Principal | None:
        return TOKENS.get(token)

    server = create_server(toolset=Toolset(Base, shop_policy()), session_factory=async_sessionmaker(engine), principal_resolver=resolve)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mcp"
    serving = asyncio.create_task(server.serve_http("127.0.0.1", port, sockets=[sock]))
    out: dict[str, float] = {}
    try:
        for _ in range(200):
            try:
                async with httpx.AsyncClient() as probe:
                    await probe.get(url)
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.05)

        async def session(token: str, work: Any) -> Any:
            http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
            async with http, streamable_http_client(url, http_client=http) as (read, write, _), ClientSession(read, write) as client:
                await client.initialize()
                return await work(client)

        async def sequential(client: Any) -> tuple[list[float], list[float]]:
            calls, pings = [], []
            for _ in range(n // 4 + 20):
                start = time.perf_counter()
                assert not (await client.call_tool("query", ARGS)).isError
                calls.append(time.perf_counter() - start)
                start = time.perf_counter()
                await client.send_ping()  # the transport alone: no tool, no database
                pings.append(time.perf_counter() - start)
            return calls[20:], pings[20:]

        calls, pings = await session(next(iter(TOKENS)), sequential)
        out["http call"] = statistics.median(calls) * 1e6
        out["http ping"] = statistics.median(pings) * 1e6

        async def burst(client: Any) -> int:
            calls = 0
            for _ in range(max(1, n // 32)):
                results = await asyncio.gather(*(client.call_tool("query", ARGS) for _ in range(8)))
                assert not any(r.isError for r in results)
                calls += len(results)
            return calls

        start = time.perf_counter()
        done = await asyncio.gather(*(session(t, burst) for t in TOKENS))
        out["http calls/s"] = sum(done) / (time.perf_counter() - start)
    finally:
        serving.cancel()
        try:
            await serving
        except asyncio.CancelledError:
            pass
        sock.close()
        await engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1000, help="rounds to time (after 50 warm-up rounds)")
    parser.add_argument("--no-http", action="store_true", help="skip the streamable HTTP part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shop.db"
        seed(path)
        r = asyncio.run(in_memory(args.n, path))
        print(
            f"sqlite query(status=pending, limit 50): raw SQLAlchemy {r['raw']:.0f} µs  kernel {r['kernel']:.0f} µs "
            f"({r['kernel/raw']:.2f}x)  MCP in memory {r['mcp']:.0f} µs ({r['mcp/raw']:.2f}x)"
        )
        if not args.no_http:
            h = asyncio.run(over_http(args.n, path))
            print(
                f"streamable HTTP on 127.0.0.1: {h['http call']:.0f} µs per call (an MCP ping: {h['http ping']:.0f} µs); "
                f"two tenants, 8 calls in flight each: {h['http calls/s']:.0f} calls/s"
            )


if __name__ == "__main__":
    main()
