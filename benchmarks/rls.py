"""What row-level security costs on PostgreSQL: the same toolset calls with and without `rls=True`.

    python -m benchmarks.rls [--rounds 300]

Builds its own schema (3 tenants x 10k orders, indexed tenant_id) and an application role that does
not own the tables, applies the generated policies, then runs interleaved, on one pooled connection
each: raw SQLAlchemy Core (scope in the WHERE clause, owner role: no RLS), the toolset without
RLS (owner role), and the toolset with `rls=True` (app role: `set_config` plus the policies).
Prints medians and median paired ratios against Core. Drops the schema and the role at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from decimal import Decimal

from sqlalchemy import Integer, Numeric, String, create_engine, insert, make_url, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ormai_agents import ModelPolicy, Policy, Principal, RowPolicy, RunContext, Toolset
from ormai_agents.rls import generate_rls

URL = os.environ.get("ORMAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    owner_id: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20))
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2))


POLICY = Policy(models={"Order": ModelPolicy(
    fields={"id": "allow", "tenant_id": "allow", "status": "allow", "total": "allow"},
    scoping={"tenant_id": "principal.tenant_id"},
    row_policies=[RowPolicy("not-void", "status != 'void'")],
)})  # fmt: skip
ACME = Principal(tenant_id="acme", user_id="u1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=300)
    rounds = parser.parse_args().rounds
    schema = f"ormai_bench_{uuid.uuid4().hex[:8]}"
    role = f"ormai_app_{uuid.uuid4().hex[:8]}"
    url = make_url(URL).set(drivername="postgresql+psycopg")
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    owner = create_engine(url, pool_size=1, connect_args={"options": f"-csearch_path={schema}"})
    app = create_engine(url.set(username=role), pool_size=1, connect_args={"options": f"-csearch_path={schema}"})
    try:
        Base.metadata.create_all(owner)
        with owner.begin() as conn:
            rows = [{"id": i, "tenant_id": ("acme", "globex", "initech")[i % 3], "owner_id": f"u{i % 5}",
                     "status": ("pending", "shipped", "void")[i % 7 % 3], "total": Decimal(i % 1000)}
                    for i in range(1, 30_001)]  # fmt: skip
            conn.execute(insert(Order), rows)
            conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
            conn.execute(text(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"'))
            generate_rls(Base, POLICY).apply(conn)
            conn.execute(text("ANALYZE orders"))
        asyncio.run(_measure(owner, app, rounds))
    finally:
        owner.dispose()
        app.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        admin.dispose()


async def _measure(owner_engine: object, app_engine: object, rounds: int) -> None:
    plain = Toolset(Base, POLICY, secret_key=b"b" * 32)
    with_rls = Toolset(Base, POLICY, secret_key=b"b" * 32, rls=True)
    core_query = (select(Order.id, Order.tenant_id, Order.status, Order.total)
                  .where(Order.tenant_id == "acme", Order.status != "void").order_by(Order.id).limit(51))  # fmt: skip
    core_get = select(Order.id, Order.tenant_id, Order.status, Order.total).where(
        Order.tenant_id == "acme", Order.status != "void", Order.id == 3).limit(1)  # fmt: skip

    async def core(s: Session, stmt: object) -> None:
        s.connection().execute(stmt).all()  # type: ignore[arg-type]
        s.rollback()

    async def tool(toolset: Toolset, s: Session, op: str) -> None:
        ctx = RunContext(ACME, s)
        if op == "query":
            await toolset.query(ctx, model="Order", limit=50)
        else:
            await toolset.get(ctx, model="Order", id=3)
        s.rollback()

    with Session(owner_engine) as so, Session(app_engine) as sa:  # type: ignore[arg-type]
        for op, stmt in (("query", core_query), ("get", core_get)):
            times: dict[str, list[float]] = {"core": [], "toolset": [], "toolset rls": []}
            runs = {
                "core": lambda: core(so, stmt),
                "toolset": lambda: tool(plain, so, op),
                "toolset rls": lambda: tool(with_rls, sa, op),
            }
            for i in range(rounds + 20):
                for name, run in runs.items():
                    start = time.perf_counter()
                    await run()
                    if i >= 20:  # warm-up
                        times[name].append(time.perf_counter() - start)
            base = times["core"]
            for name, values in times.items():
                ratio = statistics.median(v / b for v, b in zip(values, base))
                print(f"{op:6} {name:12} median {statistics.median(values) * 1e6:8.0f} us   x{ratio:.2f} vs Core")


if __name__ == "__main__":
    main()
