"""The peer, measured the same way: `ormai` 0.2.1 against raw SQLAlchemy Core, side by side.

It needs its own virtual environment (it requires sqlalchemy<2.1), and reads the SQLite file that
`python -m benchmarks.perf` writes (3 tenants x 10k orders, the same data and the same pairing):

    python -m venv .venv-peer
    .venv-peer/bin/pip install "ormai==0.2.1" "sqlalchemy<2.1"
    python -m benchmarks.perf --backends sqlite -n 10       # builds benchmarks/.data/bench-10000.db
    .venv-peer/bin/python benchmarks/peer_ormai.py benchmarks/.data/bench-10000.db

Prints median paired ratios (peer / raw Core) for a 50-row scoped query, a get by id and a count.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from sqlalchemy import Integer, Numeric, String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ormai.core.context import RunContext
from ormai.quickstart import mount_sqlalchemy


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    customer_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    total: Mapped[float] = mapped_column(Numeric(12, 2))


async def paired(raw, peer, n):  # type: ignore[no-untyped-def]
    """Median of per-pair ratios; the order inside each pair alternates."""
    ratios, raws, peers = [], [], []
    for i in range(n):
        if i % 2:
            a = time.perf_counter(); raw(); b = time.perf_counter()
            await peer(); c = time.perf_counter()
            raws.append(b - a); peers.append(c - b)
        else:
            a = time.perf_counter(); await peer(); b = time.perf_counter()
            raw(); c = time.perf_counter()
            peers.append(b - a); raws.append(c - b)
        ratios.append(peers[-1] / raws[-1])
    return statistics.median(ratios), statistics.median(raws) * 1e6, statistics.median(peers) * 1e6


async def main(path: str, n: int = 2000) -> None:
    engine = create_engine(f"sqlite:///{path}")
    mount = mount_sqlalchemy(engine, [Order], tenant_field="tenant_id", enable_mcp=False)
    t = Order.__table__
    with Session(engine) as session:
        conn = session.connection()
        ctx = RunContext.create(tenant_id="t1", user_id="u1", db=session)
        some_id = conn.execute(select(t.c.id).where(t.c.tenant_id == "t1").limit(1)).scalar()

        def raw_query():  # type: ignore[no-untyped-def]
            stmt = (
                select(t.c.id, t.c.tenant_id, t.c.customer_id, t.c.status, t.c.total)
                .where(t.c.tenant_id == "t1", t.c.status == "pending")
                .order_by(t.c.id)
                .limit(50)
            )
            return conn.execute(stmt).mappings().all()

        def peer_query():  # type: ignore[no-untyped-def]
            return mount.toolset.execute(
                "db.query",
                {"model": "Order", "where": [{"field": "status", "op": "eq", "value": "pending"}], "take": 50},
                ctx,
            )

        def raw_get():  # type: ignore[no-untyped-def]
            stmt = select(t.c.id, t.c.tenant_id, t.c.customer_id, t.c.status, t.c.total).where(
                t.c.tenant_id == "t1", t.c.id == some_id
            )
            return conn.execute(stmt).mappings().first()

        def peer_get():  # type: ignore[no-untyped-def]
            return mount.toolset.execute("db.get", {"model": "Order", "id": some_id}, ctx)

        def raw_count():  # type: ignore[no-untyped-def]
            return conn.execute(select(func.count()).select_from(t).where(t.c.tenant_id == "t1")).scalar()

        def peer_count():  # type: ignore[no-untyped-def]
            return mount.toolset.execute("db.aggregate", {"model": "Order", "operation": "count"}, ctx)

        check = await peer_query()
        if not check.success:
            raise SystemExit(f"peer query failed: {check.error}")
        print(f"{'operation':<10} {'raw µs':>8} {'peer µs':>8} {'ratio':>6}")
        for name, raw, peer in (("query50", raw_query, peer_query), ("get", raw_get, peer_get), ("count", raw_count, peer_count)):
            for _ in range(100):
                raw()
                await peer()
            ratio, r, p = await paired(raw, peer, n)
            print(f"{name:<10} {r:8.0f} {p:8.0f} {ratio:6.2f}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/.data/bench-10000.db"))
