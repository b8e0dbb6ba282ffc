"""Toolset calls against raw SQLAlchemy Core, interleaved on the same connection.

    python -m benchmarks.perf                       # SQLite, PostgreSQL and MariaDB (if reachable)
    python -m benchmarks.perf --backends sqlite --audit off,memory,sql -n 3000
    python -m benchmarks.perf --scale               # per-call cost at 10k, 100k and 1M rows
    python -m benchmarks.perf --backends none --concurrency   # 32 concurrent async calls, PostgreSQL
    python -m benchmarks.perf --repeat 3            # everything three times, then the spread of each ratio

For every operation each iteration runs the raw statement and the toolset call back to back (the
order alternates) and records ours/raw; the table shows the median of those paired ratios and the
median absolute times. Raw Core builds the same scoped statement per call, as hand-written code
would, and reads rows with `.mappings().all()`. Both run inside one coroutine, so awaiting the
toolset costs no event-loop round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Integer, Numeric, String, create_engine, func, insert, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ormai_agents import ModelPolicy, Policy, Principal, RunContext, Toolset, WriteAction, WritePolicy
from ormai_agents.audit import MemoryAuditStore

DATA = Path(__file__).with_name(".data")
TENANTS = ("t0", "t1", "t2")
STATUSES = ("pending", "shipped", "cancelled")
PG_URL = os.environ.get("ORMAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("ORMAI_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    customer_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2))


POLICY = Policy(
    models={
        "Order": ModelPolicy(
            fields={f: "allow" for f in ("id", "tenant_id", "customer_id", "status", "total")},
            scoping={"tenant_id": "principal.tenant_id"},
            write_policy=WritePolicy(
                create=WriteAction.Allow,
                update=WriteAction.Allow,
                auto_set={"tenant_id": "principal.tenant_id"},
                immutable_fields=["tenant_id"],
            ),
        )
    }
)


def seed(engine: Engine, per_tenant: int) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    rng = random.Random(1)
    rows = [
        {
            "id": i,
            "tenant_id": TENANTS[i % len(TENANTS)],
            "customer_id": rng.randint(1, 500),
            "status": rng.choice(STATUSES),
            "total": Decimal(rng.randint(0, 10_000)) / 100,
        }
        for i in range(1, per_tenant * len(TENANTS) + 1)
    ]
    with engine.begin() as conn:
        for start in range(0, len(rows), 20_000):
            conn.execute(insert(Order.__table__), rows[start : start + 20_000])
        if engine.dialect.name == "postgresql":
            # Rows were inserted with explicit ids: move the id sequence past them.
            conn.execute(text("SELECT setval(pg_get_serial_sequence('orders', 'id'), (SELECT max(id) FROM orders))"))
            conn.execute(text("ANALYZE orders"))
        elif engine.dialect.name in ("mysql", "mariadb"):
            conn.execute(text("ANALYZE TABLE orders"))


def sqlite_engine(per_tenant: int) -> Engine:
    DATA.mkdir(exist_ok=True)
    path = DATA / f"bench-{per_tenant}.db"
    engine = create_engine(f"sqlite:///{path}")
    if not path.exists() or not _has_rows(engine, per_tenant):
        seed(engine, per_tenant)
    return engine


def pg_engine(per_tenant: int) -> Engine | None:
    from sqlalchemy import make_url

    url = make_url(PG_URL).set(drivername="postgresql+psycopg")
    schema = f"ormai_bench_{per_tenant}"
    try:
        admin = create_engine(url)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        admin.dispose()
    except Exception as exc:  # noqa: BLE001
        print(f"postgres: skipped ({type(exc).__name__})")
        return None
    engine = create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    if not _has_rows(engine, per_tenant):
        seed(engine, per_tenant)
    return engine


def mysql_engine(per_tenant: int) -> Engine | None:
    """MariaDB/MySQL through PyMySQL, in a database of its own with the server's usual collation
    (utf8mb4_general_ci, which folds: the toolset's exact scope comparison is part of the cost)."""
    from sqlalchemy import make_url

    url = make_url(MYSQL_URL)
    url = url.set(drivername=f"{url.get_backend_name()}+pymysql")
    database = f"ormai_bench_{per_tenant}"
    try:
        admin = create_engine(url)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"))
        admin.dispose()
    except Exception as exc:  # noqa: BLE001
        print(f"mysql: skipped ({type(exc).__name__})")
        return None
    engine = create_engine(url.set(database=database))
    if not _has_rows(engine, per_tenant):
        seed(engine, per_tenant)
    return engine


def _has_rows(engine: Engine, per_tenant: int) -> bool:
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(Order.__table__)).scalar() == per_tenant * len(TENANTS)
    except Exception:  # noqa: BLE001
        return False


async def paired(raw: Callable[[], Any], ours: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float, float]:
    """(median ours/raw ratio, median raw µs, median ours µs); the order inside a pair alternates."""
    for _ in range(min(200, n // 5)):
        raw()
        await ours()
    ratios, raws, oursl = [], [], []
    perf = time.perf_counter
    for i in range(n):
        if i % 2:
            a = perf(); raw(); b = perf(); await ours(); c = perf()  # noqa: E702
            r, o = b - a, c - b
        else:
            a = perf(); await ours(); b = perf(); raw(); c = perf()  # noqa: E702
            o, r = b - a, c - b
        raws.append(r)
        oursl.append(o)
        ratios.append(o / r)
    return statistics.median(ratios), statistics.median(raws) * 1e6, statistics.median(oursl) * 1e6


def make_store(kind: str, engine: Engine) -> Any:
    if kind == "off":
        return None
    if kind == "memory":
        return MemoryAuditStore()
    if kind in ("jsonl", "jsonl-batched"):
        from ormai_agents.audit import JsonlAuditStore

        DATA.mkdir(exist_ok=True)
        path = DATA / f"audit-{os.getpid()}.jsonl"
        # jsonl: every record appended before the call returns; jsonl-batched: reads in batches of 100.
        return JsonlAuditStore(path, max_bytes=64 * 1024 * 1024, batch_size=100 if kind == "jsonl-batched" else 1)
    if kind == "sql":
        from ormai_agents.audit import SqlAuditStore  # type: ignore[attr-defined]

        # The records of writes commit with the change they describe (on SQLite a second
        # connection would wait for the caller's write lock).
        store = SqlAuditStore(engine, in_caller_transaction=True)
        create = getattr(store, "create_table", None)
        if create is not None:
            result = create()
            if asyncio.iscoroutine(result):
                return store, result
        return store
    raise ValueError(kind)


async def run_backend(name: str, engine: Engine, audits: list[str], n: int, ops: list[str]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    t = Order.__table__
    for audit in audits:
        store = make_store(audit, engine)
        if isinstance(store, tuple):
            store, pending = store
            await pending
        toolset = Toolset(Base, POLICY, store)
        with Session(engine) as session:
            conn = session.connection()
            ctx = RunContext(Principal(tenant_id="t1", user_id="u1"), session)
            some_id = conn.execute(select(t.c.id).where(t.c.tenant_id == "t1").order_by(t.c.id).limit(1)).scalar()
            cols = (t.c.id, t.c.tenant_id, t.c.customer_id, t.c.status, t.c.total)
            pending = [{"field": "status", "op": "eq", "value": "pending"}]

            cases: dict[str, tuple[Callable[[], Any], Callable[[], Awaitable[Any]]]] = {
                "query50": (
                    lambda: conn.execute(
                        select(*cols).where(t.c.tenant_id == "t1", t.c.status == "pending").order_by(t.c.id).limit(50)
                    ).mappings().all(),
                    lambda: toolset.query(ctx, model="Order", filters=pending, limit=50),
                ),
                "get": (
                    lambda: conn.execute(select(*cols).where(t.c.tenant_id == "t1", t.c.id == some_id)).mappings().first(),
                    lambda: toolset.get(ctx, model="Order", id=some_id),
                ),
                "count": (
                    lambda: conn.execute(select(func.count()).select_from(t).where(t.c.tenant_id == "t1")).scalar(),
                    lambda: toolset.aggregate(ctx, model="Order", function="count"),
                ),
                "group_sum": (
                    lambda: conn.execute(
                        select(t.c.status, func.sum(t.c.total))
                        .where(t.c.tenant_id == "t1")
                        .group_by(t.c.status)
                        .order_by(t.c.status)
                    ).all(),
                    lambda: toolset.aggregate(ctx, model="Order", function="sum", field="total", group_by=["status"]),
                ),
            }
            # Writes: each side runs in its own transaction and commits it, as the toolset does
            # when the host has none open.
            new = {"customer_id": 1, "status": "pending", "total": Decimal("9.99")}
            # Every update changes the row (statuses alternate), so both sides really write.
            flip = iter(STATUSES * 10**6)
            cases["update"] = (
                lambda: (
                    session.connection().execute(
                        update(t).where(t.c.id == some_id, t.c.tenant_id == "t1").values(status=next(flip))
                    ),
                    session.commit(),
                ),
                lambda: toolset.update(ctx, model="Order", id=some_id, data={"status": next(flip)}),
            )
            cases["create"] = (
                lambda: (session.connection().execute(insert(t).values(tenant_id="t1", **new)), session.commit()),
                lambda: toolset.create(ctx, model="Order", data=new),
            )
            for op, (raw, ours) in cases.items():
                if ops and op not in ops:
                    continue
                if op in ("create", "update"):
                    session.commit()  # end the reads' transaction: writes begin and commit their own
                try:
                    ratio, r_us, o_us = await paired(raw, ours, n if op not in ("create", "update") else max(n // 4, 50))
                except Exception as exc:  # noqa: BLE001
                    print(f"{name} {audit} {op}: failed ({type(exc).__name__}: {exc})")
                    session.rollback()
                    conn = session.connection()
                    continue
                rows.append((name, audit, op, r_us, o_us, ratio))
                print(f"{name:<9} {audit:<7} {op:<10} raw {r_us:8.0f} µs   ours {o_us:8.0f} µs   ratio {ratio:5.2f}", flush=True)
            session.rollback()
        if store is not None and hasattr(store, "aclose"):
            await store.aclose()
    return rows


async def concurrency(per_tenant: int, total: int = 3200, width: int = 32) -> tuple[float, ...] | None:
    """Throughput of `width` concurrent calls on the async path (asyncpg) vs raw async Core.

    Each call opens its own AsyncSession from one pool, as the framework adapters do. Every
    toolset result is checked for principal bleed: a row of another tenant fails the run.
    """
    from sqlalchemy import make_url
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    if pg_engine(per_tenant) is None:
        return None
    url = make_url(PG_URL).set(drivername="postgresql+asyncpg")
    engine = create_async_engine(
        url, pool_size=width, max_overflow=0,
        connect_args={"server_settings": {"search_path": f"ormai_bench_{per_tenant}"}},
    )  # fmt: skip
    sessions = async_sessionmaker(engine)
    toolset = Toolset(Base, POLICY)
    t = Order.__table__
    cols = (t.c.id, t.c.tenant_id, t.c.customer_id, t.c.status, t.c.total)
    bleed = 0

    async def ours(i: int) -> None:
        nonlocal bleed
        tenant = TENANTS[i % len(TENANTS)]
        async with sessions() as session:
            ctx = RunContext(Principal(tenant_id=tenant), session)
            result = await toolset.query(ctx, model="Order", filters=[{"field": "status", "op": "eq", "value": "pending"}], limit=50)
        bleed += sum(1 for r in result.rows if r["tenant_id"] != tenant)

    async def raw(i: int) -> None:
        tenant = TENANTS[i % len(TENANTS)]
        async with sessions() as session:
            conn = await session.connection()
            stmt = select(*cols).where(t.c.tenant_id == tenant, t.c.status == "pending").order_by(t.c.id).limit(50)
            (await conn.execute(stmt)).mappings().all()

    latencies: dict[str, list[float]] = {"raw": [], "ours": []}

    async def drive(fn: Callable[[int], Awaitable[None]], side: str) -> float:
        queue = iter(range(total))
        perf = time.perf_counter

        async def worker() -> None:
            for i in queue:
                t0 = perf()
                await fn(i)
                latencies[side].append(perf() - t0)

        start = perf()
        await asyncio.gather(*(worker() for _ in range(width)))
        return total / (perf() - start)

    await drive(raw, "raw")  # warm the pool
    latencies["raw"].clear()
    rates: dict[str, list[float]] = {"raw": [], "ours": []}
    for _ in range(3):
        rates["raw"].append(await drive(raw, "raw"))
        rates["ours"].append(await drive(ours, "ours"))
    await engine.dispose()
    r, o = statistics.median(rates["raw"]), statistics.median(rates["ours"])

    def p(side: str, q: int) -> float:
        return statistics.quantiles(latencies[side], n=100)[q - 1] * 1000

    print(f"\nconcurrency (PostgreSQL, asyncpg, {width} in flight, {total} calls x3): "
          f"raw {r:,.0f} calls/s   ours {o:,.0f} calls/s   ours/raw {o / r:.2f}   "
          f"p50 raw {p('raw', 50):.1f} ms ours {p('ours', 50):.1f} ms   "
          f"p99 raw {p('raw', 99):.1f} ms ours {p('ours', 99):.1f} ms   rows of another tenant: {bleed}")  # fmt: skip
    if bleed:
        raise SystemExit("principal bleed under load")
    return o / r, p("raw", 50), p("ours", 50), p("raw", 99), p("ours", 99)


def summarise(rows: list[tuple[Any, ...]], rates: list[tuple[float, ...]]) -> None:
    """Per backend, audit and operation: the median over the rounds of each round's median
    paired ratio, and the lowest and highest (the spread is the machine's noise)."""
    by: dict[tuple[str, str, str], list[float]] = {}
    for name, audit, op, _r, _o, ratio in rows:
        by.setdefault((name, audit, op), []).append(ratio)
    if by:
        print(f"\nsummary over {len(next(iter(by.values())))} rounds: median ratio [lowest - highest]")
    for (name, audit, op), ratios in by.items():
        print(f"{name:<9} {audit:<7} {op:<10} {statistics.median(ratios):5.2f} [{min(ratios):.2f} - {max(ratios):.2f}]")
    if rates:
        ratio = [r[0] for r in rates]
        print(f"\nconcurrency over {len(rates)} rounds: ours/raw {statistics.median(ratio):.2f} "
              f"[{min(ratio):.2f} - {max(ratio):.2f}]; median p50 raw {statistics.median(r[1] for r in rates):.1f} ms "
              f"ours {statistics.median(r[2] for r in rates):.1f} ms, p99 raw {statistics.median(r[3] for r in rates):.1f} ms "
              f"ours {statistics.median(r[4] for r in rates):.1f} ms")  # fmt: skip


async def scale(n: int) -> None:
    print("\nscale (SQLite, audit off): per-call cost as the table grows")
    for per_tenant in (10_000 // 3, 100_000 // 3, 1_000_000 // 3):
        engine = sqlite_engine(per_tenant)
        await run_backend(f"{per_tenant * 3:,}", engine, ["off"], n, ["query50", "get", "count"])
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="sqlite,postgres,mysql")
    parser.add_argument("--audit", default="off,memory")
    parser.add_argument("--ops", default="", help="comma-separated subset of query50,get,count,group_sum,create,update")
    parser.add_argument("-n", type=int, default=2000, help="pairs per operation")
    parser.add_argument("--per-tenant", type=int, default=10_000)
    parser.add_argument("--scale", action="store_true")
    parser.add_argument("--concurrency", action="store_true", help="32 concurrent async calls on PostgreSQL")
    parser.add_argument("--repeat", type=int, default=1, help="run everything this many times; summarise the ratios")
    args = parser.parse_args()
    ops = [o for o in args.ops.split(",") if o]
    audits = args.audit.split(",")

    async def run() -> None:
        rows: list[tuple[Any, ...]] = []
        rates: list[tuple[float, ...]] = []
        for round_ in range(args.repeat):
            if args.repeat > 1:
                print(f"\nround {round_ + 1} of {args.repeat}", flush=True)
            for backend in args.backends.split(","):
                makers = {"sqlite": sqlite_engine, "postgres": pg_engine, "mysql": mysql_engine}
                if backend not in makers:
                    continue
                engine = makers[backend](args.per_tenant)
                if engine is None:
                    continue
                rows += await run_backend(backend, engine, audits, args.n, ops)
                engine.dispose()
            if args.scale:
                await scale(args.n)
            if args.concurrency:
                rate = await concurrency(args.per_tenant)
                if rate is not None:
                    rates.append(rate)
        if args.repeat > 1:
            summarise(rows, rates)

    asyncio.run(run())


if __name__ == "__main__":
    main()
