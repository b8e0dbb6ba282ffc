"""The read path against raw SQLAlchemy Core: query, get and aggregate, interleaved.

    python -m benchmarks.bench_read              # SQLite file DB, then PostgreSQL if reachable
    python -m benchmarks.bench_read -n 500       # fewer pairs per operation

3 tenants x 10k orders in one table (tenant_id indexed). On one sync Session, driven inside one
running event loop, each iteration runs a toolset call and the equivalent scoped Core statement
(built per call, as a hand-written app would) back to back on the same connection, alternating
which goes first; the table shows the median of the per-pair ratios ours/raw and the median
absolute times. No audit store. The data set and the pairing are benchmarks.perf's, which also
measures writes, audit stores, table size and concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from benchmarks.perf import pg_engine, run_backend, sqlite_engine

PER_TENANT = 10_000
OPERATIONS = {"query50": "query, 50 rows, one filter", "get": "get by id", "count": "aggregate count"}


async def run(n: int, backends: list[str]) -> list[tuple[Any, ...]]:
    results: list[tuple[Any, ...]] = []
    for backend in backends:
        engine = sqlite_engine(PER_TENANT) if backend == "sqlite" else pg_engine(PER_TENANT)
        if engine is None:
            continue
        results += await run_backend(backend, engine, ["off"], n, list(OPERATIONS))
        engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="pairs per operation")
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    results = asyncio.run(run(args.n, [b for b in args.backends.split(",") if b in ("sqlite", "postgres")]))
    print(f"\n{'backend':<9} {'operation':<28} {'raw µs':>8} {'ours µs':>8} {'ours/raw':>9}")
    for backend, _, op, raw_us, ours_us, ratio in results:
        print(f"{backend:<9} {OPERATIONS[op]:<28} {raw_us:8.0f} {ours_us:8.0f} {ratio:9.2f}")


if __name__ == "__main__":
    main()
