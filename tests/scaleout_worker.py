"""One application process of the scale-out tests and benchmark: `python -m tests.scaleout_worker JSON`.

It builds the toolset every process builds (the same policy, the same `secret_key`, `rls=True`,
one `SqlAuditStore` and one `SqlApprovalStore` on the application's engine), runs calls as its
configuration says, and prints one JSON line per call as soon as the call returns (so a process
killed mid-run has reported exactly the calls that returned).

Engines use the settings a transaction pooler needs when `pooled` (see docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from ormai_agents import OrmAIError, Policy, Principal, RowPolicy, RunContext, Toolset, WriteAction, WritePolicy
from ormai_agents.approvals import SqlApprovalStore
from ormai_agents.audit import SqlAuditStore
from tests import shop

SECRET = b"scale-out-shared-secret-32-bytes"
PRINCIPALS = {
    "acme": Principal(tenant_id="acme", user_id="u1"),
    "globex": Principal(tenant_id="globex", user_id="u2"),
    "initech": Principal(tenant_id="initech", user_id="u3"),
}


def scaleout_policy() -> Policy:
    """The shop policy; orders are created, updated and bulk-updated freely, deleted on approval."""
    base = shop.shop_policy()
    models = dict(base.models)
    models["Order"] = base.models["Order"].model_copy(
        update={
            "write_policy": WritePolicy(
                create=WriteAction.Allow,
                update=WriteAction.Allow,
                bulk_update=WriteAction.Allow,
                delete=WriteAction.RequireApproval,
                auto_set={"tenant_id": "principal.tenant_id", "owner_id": "principal.user_id", "created_at": "now()"},
                immutable_fields=["customer_id"],
                required_fields=["total"],
                max_affected_rows=10,
            ),
            "row_policies": [RowPolicy("small_quantity", "quantity IS NULL OR quantity < 100")],
        }
    )
    return Policy(models=models)


def make_engine(url: str, driver: str, pooled: bool, pool_size: int = 8) -> AsyncEngine:
    """The application's engine; through a transaction pooler, no server-side prepared statement
    may outlive its transaction."""
    connect_args: dict[str, Any] = {}
    if pooled and driver == "asyncpg":
        connect_args = {
            "statement_cache_size": 0,  # asyncpg's own cache of named statements
            "prepared_statement_cache_size": 0,  # SQLAlchemy's cache of asyncpg statements
            "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4()}__",  # unique names
        }
    elif pooled and driver == "psycopg":
        connect_args = {"prepare_threshold": None}  # psycopg 3 never prepares on the server
    return create_async_engine(url, connect_args=connect_args, pool_size=pool_size, max_overflow=0, pool_timeout=30)


def out(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields, default=str) + "\n")
    sys.stdout.flush()


class Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.engine = make_engine(config["url"], config["driver"], config.get("pooled", True), config.get("pool_size", 8))
        audit = config.get("audit", {})
        self.audit = SqlAuditStore(self.engine, **audit)
        self.approvals = SqlApprovalStore(self.engine, create_table=False)
        self.toolset = Toolset(
            shop.Base, scaleout_policy(), self.audit, secret_key=SECRET, rls=config.get("rls", True), approval_store=self.approvals
        )
        self.name = config.get("name", "w")

    async def call(self, tenant: str, tool: str, request_id: str, **kwargs: Any) -> Any:
        started = time.perf_counter()
        session = AsyncSession(self.engine)
        try:
            ctx = RunContext(PRINCIPALS[tenant], session, request_id=request_id)
            try:
                result = await getattr(self.toolset, tool)(ctx, **kwargs)
                outcome, error = "success", None
            except OrmAIError as exc:
                result, outcome, error = None, exc.code, exc
        finally:
            try:
                await session.close()
            except DBAPIError:
                pass  # the connection died after the call returned: nothing left to roll back
        ms = (time.perf_counter() - started) * 1000
        rows = getattr(result, "rows", None)
        data = getattr(result, "data", None)
        ids = [r["id"] for r in rows] if rows is not None else ([data["id"]] if isinstance(data, dict) and "id" in data else [])
        out(call=request_id, tenant=tenant, tool=tool, outcome=outcome, ids=ids, ms=round(ms, 3),
            approval_id=getattr(error, "approval_id", None), next_cursor=getattr(result, "next_cursor", None),
            updated=(data or {}).get("updated_count") if isinstance(data, dict) else None)  # fmt: skip
        return result

    async def mixed(self) -> None:
        """`tasks` concurrent tasks, each making `calls` calls as one tenant: reads and writes."""
        tenants = self.config.get("tenants", list(PRINCIPALS))
        calls = self.config.get("calls", 10)
        writes = self.config.get("writes", True)

        async def task(t: int) -> None:
            tenant = tenants[t % len(tenants)]
            seen: list[Any] = []
            for k in range(calls):
                rid = f"{self.name}-{t}-{k}"
                kind = k % 5
                if kind == 0 or (not writes and kind >= 3):
                    page = await self.call(tenant, "query", rid, model="Order", select=["id", "tenant_id", "status"], limit=20)
                    seen = [r["id"] for r in page.rows] if page is not None else seen
                elif kind == 1 and seen:
                    await self.call(tenant, "get", rid, model="Order", id=seen[k % len(seen)])
                elif kind in (1, 2):
                    await self.call(tenant, "aggregate", rid, model="Order", function="count")
                elif kind == 3 and seen:
                    await self.call(tenant, "update", rid, model="Order", id=seen[k % len(seen)], data={"status": f"u-{rid}"})
                else:
                    await self.call(tenant, "create", rid, model="Order", data={"status": f"c-{rid}", "total": Decimal("1.50")})

        await asyncio.gather(*(task(t) for t in range(self.config.get("tasks", 8))))

    async def creates(self) -> None:
        """Creates and bulk updates without end (until killed): `c-NAME-T-K` and `b-NAME-T-K` markers."""
        tenants = self.config.get("tenants", list(PRINCIPALS))

        async def task(t: int) -> None:
            tenant = tenants[t % len(tenants)]
            k = 0
            while True:
                rid = f"{self.name}-{t}-{k}"
                created = [await self.call(tenant, "create", f"{rid}-{i}", model="Order", data={"status": f"c-{rid}-{i}", "total": "2.00"})
                           for i in range(3)]  # fmt: skip
                keys = [c.data["id"] for c in created if c is not None]
                if len(keys) == 3:
                    await self.call(tenant, "bulk_update", f"{rid}-b", model="Order",
                                    filters=[{"field": "id", "op": "in", "value": keys}], data={"status": f"b-{rid}"})  # fmt: skip
                k += 1

        await asyncio.gather(*(task(t) for t in range(self.config.get("tasks", 8))))

    async def serve(self) -> None:
        """Reads, then wait for SIGTERM; on SIGTERM store the batched audit records and exit."""
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        tenant = self.config.get("tenants", ["acme"])[0]
        for k in range(self.config.get("calls", 10)):
            await self.call(tenant, "aggregate", f"{self.name}-read-{k}", model="Order", function="count")
        out(ready=True, pending=self.audit.pending)
        await stop.wait()

    async def page(self) -> None:
        """The next page of a query, from a cursor another process minted."""
        c = self.config
        await self.call(c["tenant"], "query", f"{self.name}-page", model="Order", select=["id", "tenant_id"], limit=c["limit"],
                        order_by=["id"], cursor=c.get("cursor"))  # fmt: skip

    async def submit(self) -> None:
        await self.call(self.config["tenant"], "delete", f"{self.name}-submit", model="Order", id=self.config["id"])

    async def execute(self) -> None:
        await asyncio.sleep(max(0.0, self.config.get("start_at", 0) - time.time()))  # start together
        tenant = self.config["tenant"]
        await self.call(tenant, "execute_approved", f"{self.name}-execute", approval_id=self.config["approval_id"])

    async def execute_many(self) -> None:
        """`execute_approved` for each of `approval_ids`, `tasks` at a time (request id NAME-APPROVAL)."""
        tenant, ids = self.config["tenant"], list(self.config["approval_ids"])
        tasks = self.config.get("tasks", 4)

        async def task(t: int) -> None:
            for approval_id in ids[t::tasks]:
                await self.call(tenant, "execute_approved", f"{self.name}-{approval_id}", approval_id=approval_id)

        await asyncio.gather(*(task(t) for t in range(tasks)))

    async def run(self) -> None:
        if self.config.get("log"):
            def dump() -> None:
                for task in asyncio.all_tasks():
                    sys.stderr.write(f"--- {task.get_name()}\n")
                    coro: Any = task.get_coro()
                    while coro is not None:
                        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
                        if frame is not None:
                            sys.stderr.write(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}\n")
                        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)

            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
        out(started=time.time())
        try:
            await getattr(self, self.config["mode"])()
        finally:
            await self.audit.aclose()
            out(finished=time.time())
            await self.engine.dispose()


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    if settings.get("log"):
        import faulthandler
        import logging

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True)
    asyncio.run(Worker(settings).run())
