"""What the LlamaIndex adapter adds to a toolset call: session per call, span, audit event.

    python -m benchmarks.bench_llamaindex            # SQLite file DB, -n 2000 pairs
    python -m benchmarks.bench_llamaindex -n 500

The demo shop (ormai_agents.demo) in a temporary SQLite file. Each pair runs, alternating which
goes first: (a) `toolset.query(...)` on one already-open sync Session; (b) the same call on a
session opened, committed and closed around it (what every adapter call does); (c) the bound
`FunctionTool.acall(...)` of the same query, which does (b) inside an `ormai_agents` span, emits
an `OrmAIAuditEvent` and renders the result as JSON. Prints the medians in µs and the median
ratios c/a and c/b.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from ormai_agents import RunContext, Toolset
from ormai_agents.demo import PRINCIPALS, Base, seed_shop, shop_policy

ARGS = {"model": "Order", "filters": [{"field": "status", "op": "eq", "value": "pending"}], "limit": 50}


async def run(n: int, path: Path) -> dict[str, float]:
    from ormai_agents._sessions import open_session
    from ormai_agents.llamaindex import OrmAIToolSpec

    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        seed_shop(s)
    toolset = Toolset(Base, shop_policy())
    principal = PRINCIPALS["acme"]
    tool = next(t for t in OrmAIToolSpec(toolset=toolset, session_factory=sessionmaker(engine)).get_tools(principal)
                if t.metadata.name == "query")  # fmt: skip
    factory = sessionmaker(engine)
    names = ("direct", "session", "adapter")
    times: dict[str, list[float]] = {k: [] for k in names}
    with Session(engine) as db:
        ctx = RunContext(principal, db)
        for i in range(n + 50):
            timings = {}
            for which in names[i % 3 :] + names[: i % 3]:
                start = time.perf_counter()
                if which == "direct":
                    await toolset.query(ctx, **ARGS)
                elif which == "session":
                    async with open_session(factory) as own:
                        await toolset.query(RunContext(principal, own), **ARGS)
                else:
                    out = await tool.acall(**ARGS)
                    assert not out.is_error
                timings[which] = time.perf_counter() - start
            if i >= 50:  # warm-up
                for k in names:
                    times[k].append(timings[k])
    engine.dispose()
    out = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    out["c/a"] = statistics.median(c / a for c, a in zip(times["adapter"], times["direct"]))
    out["c/b"] = statistics.median(c / b for c, b in zip(times["adapter"], times["session"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="pairs to time (after 50 warm-up pairs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = asyncio.run(run(args.n, Path(tmp) / "shop.db"))
    print(
        f"sqlite query(status=pending, limit 50): (a) toolset {r['direct']:.0f} µs  (b) + own session "
        f"{r['session']:.0f} µs  (c) FunctionTool.acall {r['adapter']:.0f} µs  c/a {r['c/a']:.2f}x  c/b {r['c/b']:.2f}x"
    )


if __name__ == "__main__":
    main()
