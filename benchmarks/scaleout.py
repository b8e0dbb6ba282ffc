"""Throughput of several application processes, through PgBouncer and straight to PostgreSQL.

    python -m benchmarks.scaleout                          # 1, 2 and 4 processes, both paths
    python -m benchmarks.scaleout --processes 1,4 --calls 40 --driver psycopg

Each process (tests/scaleout_worker.py, the process of the scale-out tests) builds the same
toolset (`rls=True`, one `SqlAuditStore` and one `SqlApprovalStore` on its engine) and runs
`--tasks` concurrent tasks of `--calls` calls each, as one of three tenants: queries of 20 rows,
gets, counts, updates and creates (3 reads for 2 writes). Through PgBouncer (transaction
pooling, `--server-connections` server connections) the engines use the pooler settings of
docs/deployment.md; straight to PostgreSQL each process has a pool of `--tasks` connections.

Reported per run: calls per second (every call of every process, from the first process's first
call to the last process's last), p50 and p99 latency of one call, and the bleed count: rows a
call returned that the database says belong to another tenant (must be 0). Interpreter start-up
is outside the timing. Needs PostgreSQL on 127.0.0.1:5432 and the `pgbouncer` binary.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.pool import NullPool

from tests import shop
from tests.pgbouncer import Pooler
from tests.test_scaleout import Worker, prepare


def run(pooler: Pooler, processes: int, pooled: bool, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    url = pooler.url(args.driver, pooled=pooled).render_as_string(hide_password=False)
    configs = [
        {"mode": "mixed", "driver": args.driver, "url": url, "pooled": pooled, "name": f"{tag}-{n}",
         "tasks": args.tasks, "calls": args.calls, "pool_size": args.tasks, "timed": True}
        for n in range(processes)
    ]  # fmt: skip
    workers = [Worker(pooler, c) for c in configs]
    lines = [line for w in workers for line in w.finish(timeout=600)]
    calls = [line for line in lines if "call" in line]
    started = min(line["started"] for line in lines if "started" in line)
    finished = max(line["finished"] for line in lines if "finished" in line)
    owner = create_engine(pooler.url("psycopg", pooled=False, owner=True), poolclass=NullPool)
    orders = shop.Order.__table__
    with owner.connect() as conn:
        truth = dict(conn.execute(select(orders.c.id, orders.c.tenant_id)).all())
    owner.dispose()
    ms = sorted(c["ms"] for c in calls)
    return {
        "processes": processes,
        "path": "PgBouncer" if pooled else "direct",
        "calls": len(calls),
        "failed": sum(1 for c in calls if c["outcome"] != "success"),
        "calls_per_s": len(calls) / (finished - started),
        "p50": statistics.median(ms),
        "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        "bleed": sum(1 for c in calls for i in c["ids"] if truth.get(i) != c["tenant"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--tasks", type=int, default=8, help="concurrent calls in flight per process")
    parser.add_argument("--calls", type=int, default=50, help="calls per task")
    parser.add_argument("--driver", default="asyncpg", choices=["asyncpg", "psycopg"])
    parser.add_argument("--server-connections", type=int, default=8, help="PgBouncer's default_pool_size")
    args = parser.parse_args()
    pooler = Pooler(pool_size=args.server_connections).start(prepare)
    rows = []
    try:
        for n in (int(x) for x in args.processes.split(",")):
            for pooled in (True, False):
                row = run(pooler, n, pooled, args, f"bench-{n}-{'pgb' if pooled else 'direct'}")
                rows.append(row)
                print(f"{row['processes']} process(es) {row['path']:<9} {row['calls']:5d} calls  {row['calls_per_s']:7.0f} calls/s  "
                      f"p50 {row['p50']:6.1f} ms  p99 {row['p99']:6.1f} ms  failed {row['failed']}  bleed {row['bleed']}",
                      flush=True)  # fmt: skip
    finally:
        pooler.stop()
    print("\n| processes | path | calls | calls/s | p50 ms | p99 ms | bleed |\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['processes']} | {r['path']} | {r['calls']} | {r['calls_per_s']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['bleed']} |")


if __name__ == "__main__":
    main()
