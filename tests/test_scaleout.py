"""Several application processes, nothing shared in memory, PostgreSQL behind PgBouncer.

PgBouncer runs in transaction pooling with 4 server connections (tests/pgbouncer.py), in front
of a database of its own, as an application role that row-level security applies to. Each
process (tests/scaleout_worker.py) builds the same toolset: the same policy and `secret_key`,
`rls=True`, one `SqlAuditStore` and one `SqlApprovalStore` on its engine. The truth is read
straight from the server as the owner.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, create_engine, func, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from ormai_agents.approvals import SqlApprovalStore
from ormai_agents.audit import audit_table
from ormai_agents.rls import generate_rls
from tests import shop
from tests.conftest import IN_CI, require_postgres
from tests.pgbouncer import Pooler, pgbouncer_binary
from tests.scaleout_worker import PRINCIPALS, make_engine, scaleout_policy

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ORDERS = shop.Order.__table__


def prepare(conn: Any) -> None:
    """The shop, seeded; the audit and approvals tables; row-level security from the policy."""
    shop.Base.metadata.create_all(conn)
    rows: dict[Any, list[dict[str, Any]]] = {}
    for obj in shop.seed_rows():
        table = type(obj).__table__
        rows.setdefault(table, []).append({c.key: getattr(obj, c.key) for c in table.columns})
    for table in shop.Base.metadata.sorted_tables:
        if rows.get(table):
            conn.execute(insert(table), rows[table])
    for model in (shop.Customer, shop.Order, shop.Document):
        sequence = func.pg_get_serial_sequence(model.__tablename__, "id")
        conn.execute(select(func.setval(sequence, select(func.max(model.id)).scalar_subquery())))
    audit_table(MetaData()).create(conn)
    SqlApprovalStore(conn.engine, create_table=False).table.create(conn)
    generate_rls(shop.Base, scaleout_policy()).apply(conn)


@pytest.fixture(scope="module")
def pooler() -> Iterator[Pooler]:
    require_postgres()
    if pgbouncer_binary() is None:
        message = "pgbouncer is not installed (.ci/run installs it: apt-get install -y pgbouncer)"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    p = Pooler().start(prepare)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def owner(pooler: Pooler) -> Iterator[Engine]:
    """Straight to the server, as the owner: every row, no pooler."""
    engine = create_engine(pooler.url("psycopg", pooled=False, owner=True), poolclass=NullPool)
    yield engine
    engine.dispose()


class Worker:
    """A worker process whose JSON lines go to a file: a full pipe would stop its event loop, and a
    process stopped in the middle of a transaction holds one of PgBouncer's server connections."""

    def __init__(self, pooler: Pooler, config: dict[str, Any]) -> None:
        driver = config.setdefault("driver", "asyncpg")
        config.setdefault("url", pooler.url(driver, pooled=config.get("pooled", True)).render_as_string(hide_password=False))
        # Files of their own, opened for appending: the worker's offset is never the reader's.
        directory = tempfile.mkdtemp(prefix="ormai-worker-")
        self.path, self.error_path = os.path.join(directory, "out.jsonl"), os.path.join(directory, "err.txt")
        with open(self.path, "a") as out, open(self.error_path, "a") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.scaleout_worker", json.dumps(config)],
                cwd=ROOT, stdout=out, stderr=err, text=True,
            )  # fmt: skip

    def lines(self) -> list[dict[str, Any]]:
        with open(self.path) as fh:
            text = fh.read()
        complete = text[: text.rfind("\n") + 1]  # a line being written is read next time
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def wait_for(self, count: int, key: str = "call", timeout: float = 60) -> list[dict[str, Any]]:
        """Once at least `count` lines with `key` were written."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines() if key in line]
            if len(found) >= count:
                return found
            assert self.process.poll() is None, "the worker ended early"
            time.sleep(0.02)
        raise TimeoutError(f"fewer than {count} {key!r} lines")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def finish(self, timeout: float = 60) -> list[dict[str, Any]]:
        self.process.wait(timeout=timeout)
        with open(self.error_path) as fh:
            errors = fh.read()
        assert self.process.returncode in (0, -signal.SIGKILL), errors[-3000:]
        lines = self.lines()
        shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)
        return lines


def start(pooler: Pooler, **config: Any) -> Worker:
    return Worker(pooler, config)


def run(pooler: Pooler, configs: list[dict[str, Any]], timeout: float = 60) -> list[list[dict[str, Any]]]:
    workers = [start(pooler, **c) for c in configs]
    return [w.finish(timeout) for w in workers]


def calls(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if "call" in line]


def tenant_of(owner: Engine) -> dict[int, str | None]:
    with owner.connect() as conn:
        return {r.id: r.tenant_id for r in conn.execute(select(ORDERS.c.id, ORDERS.c.tenant_id))}


def audit_records(owner: Engine, prefix: str) -> list[dict[str, Any]]:
    table = audit_table(MetaData())
    with owner.connect() as conn:
        rows = conn.execute(select(table).where(table.c.request_id.like(f"{prefix}%"))).mappings().all()
    return [dict(r) for r in rows]


def statuses(owner: Engine, pattern: str) -> Counter[str]:
    with owner.connect() as conn:
        return Counter(conn.execute(select(ORDERS.c.status).where(ORDERS.c.status.like(pattern))).scalars())


def bleed(owner: Engine, lines: list[dict[str, Any]]) -> int:
    """Rows returned to a tenant that the database says belong to another."""
    truth = tenant_of(owner)
    return sum(1 for c in calls(lines) for i in c["ids"] if truth.get(i) != c["tenant"])


# --- several processes through PgBouncer --------------------------------------------------------


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_processes_through_pgbouncer_see_only_their_tenant(pooler: Pooler, owner: Engine, driver: str) -> None:
    prefix = f"mix-{driver}"
    configs = [{"mode": "mixed", "driver": driver, "name": f"{prefix}-{n}", "tasks": 8, "calls": 10} for n in range(4)]
    results = run(pooler, configs)
    lines = [line for result in results for line in result]
    done = calls(lines)
    assert len(done) == 4 * 8 * 10
    # No prepared-statement error, no pool exhaustion, no deadlock: every call succeeded.
    assert Counter(c["outcome"] for c in done) == {"success": len(done)}
    assert sum(len(c["ids"]) for c in done if c["tool"] == "query") > 100  # the reads did return rows
    assert bleed(owner, lines) == 0
    # Every call of every process is in the one audit trail, writes with what they wrote.
    records = audit_records(owner, prefix)
    assert sorted(r["request_id"] for r in records) == sorted(c["call"] for c in done)
    truth = tenant_of(owner)
    for r in records:
        if r["tool_name"] in ("create", "update"):
            assert truth[r["after"]["id"]] == r["tenant_id"]
    assert statuses(owner, f"c-{prefix}-%").total() == sum(1 for c in done if c["tool"] == "create")


def test_no_tenant_setting_stays_on_a_pooled_server_connection(pooler: Pooler, owner: Engine) -> None:
    run(pooler, [{"mode": "mixed", "name": "settings", "tasks": 8, "calls": 5, "writes": False}])
    # Four transactions at once through PgBouncer: one on each of its four server connections.
    sync = create_engine(pooler.url("psycopg"), connect_args={"prepare_threshold": None}, poolclass=NullPool)
    connections = [sync.connect() for _ in range(4)]
    try:
        seen = set()
        for conn in connections:
            row = conn.execute(text("select pg_backend_pid(), current_setting('ormai.tenant_id', true)")).one()
            seen.add(row[0])
            assert row[1] in (None, "")
        assert len(seen) == 4
        # And without the toolset's settings, row-level security shows this role nothing.
        assert connections[0].execute(select(func.count()).select_from(ORDERS)).scalar_one() == 0
    finally:
        for conn in connections:
            conn.close()
        sync.dispose()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_without_the_pooler_settings_prepared_statements_break(pooler: Pooler, driver: str) -> None:
    """The settings in docs/deployment.md are needed. Through `ormai_two` (two server
    connections, reused last-in first-out), a statement the driver prepared on the server in one
    transaction is looked for in the next on another server connection."""
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    url = pooler.url(driver, alias="ormai_two").render_as_string(hide_password=False)
    stmt = select(ORDERS.c.id).where(ORDERS.c.id == 1)

    async def hop(engine: Any) -> None:
        a, b = await engine.connect(), await engine.connect()
        try:
            await a.execute(select(1))  # a holds one server connection in its transaction
            for _ in range(6):  # b runs on the other one (psycopg prepares on the 5th run)
                await b.execute(stmt)
                await b.commit()
            await a.commit()  # released last, a's server connection is the first reused
            await b.execute(stmt)
            await b.commit()
        finally:
            await a.close()
            await b.close()
            await engine.dispose()

    with pytest.raises(Exception, match="prepared statement"):
        asyncio.run(hop(create_async_engine(url)))
    asyncio.run(hop(make_engine(url, driver, pooled=True)))


# --- stateless processes: cursors and approvals ----------------------------------------------------


def test_cursors_and_approvals_work_across_processes(pooler: Pooler, owner: Engine) -> None:
    with owner.connect() as conn:
        expected = list(conn.execute(select(ORDERS.c.id).where(ORDERS.c.tenant_id == "acme").order_by(ORDERS.c.id)).scalars())
    (first,) = run(pooler, [{"mode": "page", "name": "page-a", "tenant": "acme", "limit": 5}])
    cursor = calls(first)[0]["next_cursor"]
    assert cursor and calls(first)[0]["ids"] == expected[:5]
    second, stranger = run(pooler, [
        {"mode": "page", "name": "page-b", "tenant": "acme", "limit": 5, "cursor": cursor},
        {"mode": "page", "name": "page-c", "tenant": "globex", "limit": 5, "cursor": cursor},
    ])  # fmt: skip
    assert calls(second)[0]["ids"] == expected[5:10]  # another process continues the same query
    assert calls(stranger)[0]["outcome"] == "invalid_cursor"  # bound to the principal that got it

    # An approval requested through one process is executed exactly once, whichever processes try.
    target = expected[-1]
    (submitted,) = run(pooler, [{"mode": "submit", "name": "approve-submit", "tenant": "acme", "id": target}])
    approval_id = calls(submitted)[0]["approval_id"]
    assert calls(submitted)[0]["outcome"] == "approval_required" and approval_id
    approvals = SqlApprovalStore(owner, create_table=False)
    import asyncio

    asyncio.run(approvals.approve(approval_id, decided_by="alice"))
    at = time.time() + 1.5
    results = run(pooler, [{"mode": "execute", "name": f"approve-{n}", "tenant": "acme", "approval_id": approval_id, "start_at": at}
                           for n in range(3)])  # fmt: skip
    outcomes = sorted(calls(r)[0]["outcome"] for r in results)
    assert outcomes == ["approval_invalid", "approval_invalid", "success"]
    assert target not in tenant_of(owner)
    tries = sorted((r["outcome"], r["error_code"]) for r in audit_records(owner, "approve-") if r["request_id"].endswith("-execute"))
    assert tries == [("denied", "approval_invalid")] * 2 + [("success", None)]
    assert [r["tool_name"] for r in audit_records(owner, "approve-") if r["outcome"] == "success"] == ["delete"]
    assert asyncio.run(approvals.get(approval_id)).status.value == "executed"  # type: ignore[union-attr]


# --- shutdown and faults ---------------------------------------------------------------------------


def test_sigterm_stores_the_batched_read_records(pooler: Pooler, owner: Engine) -> None:
    worker = start(pooler, mode="serve", name="term", calls=20, audit={"batch_size": 1000, "flush_interval": 60})
    (ready,) = worker.wait_for(1, key="ready")
    assert ready["pending"] == 20  # batched, not yet stored
    assert audit_records(owner, "term-") == []
    worker.signal(signal.SIGTERM)
    worker.finish(timeout=30)
    assert worker.process.returncode == 0
    assert sorted(r["request_id"] for r in audit_records(owner, "term-")) == sorted(f"term-read-{k}" for k in range(20))


def check_writes(owner: Engine, prefix: str, reported: list[dict[str, Any]]) -> Counter[str]:
    """No partial or duplicated write, and an audit trail that matches the database.

    The worker creates rows `c-CALL` three at a time, then bulk-updates the three to `b-GROUP`."""
    with owner.connect() as conn:
        rows = conn.execute(select(ORDERS.c.id, ORDERS.c.status).where(ORDERS.c.status.like(f"_-{prefix}-%"))).all()
    marks = Counter(status for _, status in rows)
    ids = {key for key, _ in rows}
    assert all(n == 1 for m, n in marks.items() if m.startswith("c-"))  # never written twice
    assert all(n == 3 for m, n in marks.items() if m.startswith("b-"))  # three rows or none
    # The trail matches the database: a row exists if and only if its create was audited, a bulk
    # update is applied if and only if it was audited.
    records = [r for r in audit_records(owner, f"{prefix}-") if r["outcome"] == "success"]
    assert {r["after"]["id"] for r in records if r["tool_name"] == "create"} == ids
    assert {r["request_id"][: -len("-b")] for r in records if r["tool_name"] == "bulk_update"} == {m[2:] for m in marks if m.startswith("b-")}
    # What a call reported holds.
    for c in calls(reported):
        if c["tool"] == "create":
            if c["outcome"] == "success":
                assert c["ids"][0] in ids
            elif c["outcome"] != "write_outcome_unknown":
                assert marks[f"c-{c['call']}"] == 0 and marks[f"b-{c['call'].rsplit('-', 1)[0]}"] == 0
        elif c["tool"] == "bulk_update" and c["outcome"] != "write_outcome_unknown":
            assert marks[f"b-{c['call'][: -len('-b')]}"] == (3 if c["outcome"] == "success" else 0)
    return Counter(c["outcome"] for c in calls(reported))


def test_sigkill_mid_writes_leaves_no_partial_write_and_a_true_audit_trail(pooler: Pooler, owner: Engine) -> None:
    worker = start(pooler, mode="creates", name="kill", tasks=6)
    worker.wait_for(60)
    worker.signal(signal.SIGKILL)  # in the middle of the writes of six tasks
    reported = worker.finish()
    outcomes = check_writes(owner, "kill", reported)
    assert outcomes["success"] >= 60


def test_killed_server_connections_retry_reads_and_never_duplicate_writes(pooler: Pooler, owner: Engine) -> None:
    readers = start(pooler, mode="mixed", name="fr", tasks=6, calls=60, writes=False)
    writers = start(pooler, mode="creates", name="fw", tasks=4)
    writers.wait_for(20)

    def kill_backends() -> int:
        with owner.connect() as conn:
            pids = conn.execute(text("select pid from pg_stat_activity where usename = :u"), {"u": pooler.role}).scalars().all()
            for pid in pids:
                conn.execute(select(func.pg_terminate_backend(pid)))
        return len(pids)

    killed = 0
    for round_ in range(3):
        time.sleep(0.4)
        if round_ == 1:
            pooler.console("KILL ormai")  # the pooler drops every client and server connection
            pooler.console("RESUME ormai")
        else:
            killed += kill_backends()
    assert killed > 0
    time.sleep(0.4)
    writers.signal(signal.SIGKILL)
    reads = readers.finish(timeout=120)
    writes = writers.finish()
    # Reads were retried on a new connection: none failed, none saw another tenant's row, and
    # every one is in the audit trail once.
    assert Counter(c["outcome"] for c in calls(reads)) == {"success": len(calls(reads))} and len(calls(reads)) == 360
    assert bleed(owner, reads) == 0
    assert sorted(r["request_id"] for r in audit_records(owner, "fr-")) == sorted(c["call"] for c in calls(reads))
    outcomes = check_writes(owner, "fw", writes)
    # Writes: done, failed before the commit (nothing written), or reported as of unknown outcome.
    assert outcomes["success"] > 20 and set(outcomes) <= {"success", "database_unavailable", "write_outcome_unknown"}, outcomes
    # The stores kept working: a fresh process reads, writes and is audited.
    (after,) = run(pooler, [{"mode": "mixed", "name": "fa", "tasks": 2, "calls": 5}])
    assert Counter(c["outcome"] for c in calls(after)) == {"success": 10}
    assert len(audit_records(owner, "fa-")) == 10


def test_sigkill_while_two_processes_execute_the_same_approvals() -> None:
    """Two processes execute the same 40 approved deletes, in opposite orders; one is killed
    (SIGKILL) in the middle. No approval runs twice, none runs half, and the approvals table, the
    audit trail and the orders agree. A PgBouncer of its own: the module's was sent KILL, which
    PgBouncer 1.18 can leave closing client connections late."""
    pooler = Pooler().start(prepare)
    owner = create_engine(pooler.url("psycopg", pooled=False, owner=True), poolclass=NullPool)
    try:
        two_processes_execute_the_same_approvals(pooler, owner)
    finally:
        owner.dispose()
        pooler.stop()


def two_processes_execute_the_same_approvals(pooler: Pooler, owner: Engine) -> None:
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncSession

    from ormai_agents import ApprovalRequiredError, RunContext, Toolset
    from tests.scaleout_worker import SECRET

    with owner.begin() as conn:
        targets = list(conn.execute(insert(ORDERS).returning(ORDERS.c.id), [
            {"tenant_id": "acme", "owner_id": "u1", "status": f"apr-{k}", "total": 1, "quantity": 1} for k in range(40)
        ]).scalars())  # fmt: skip
    engine = make_engine(pooler.url("asyncpg").render_as_string(hide_password=False), "asyncpg", pooled=True, pool_size=4)
    approvals = SqlApprovalStore(engine, create_table=False)
    tools = Toolset(shop.Base, scaleout_policy(), secret_key=SECRET, rls=True, approval_store=approvals)

    async def submit_all() -> list[str]:
        ids = []
        for target in targets:
            async with AsyncSession(engine) as session:
                with pytest.raises(ApprovalRequiredError) as asked:
                    await tools.delete(RunContext(PRINCIPALS["acme"], session), model="Order", id=target)
            ids.append(str(asked.value.approval_id))
            await approvals.approve(ids[-1], decided_by="alice")
        await engine.dispose()
        return ids

    approval_ids = asyncio.run(submit_all())
    killed = start(pooler, mode="execute_many", name="aprk", tenant="acme", approval_ids=approval_ids, tasks=4)
    survivor = start(pooler, mode="execute_many", name="aprs", tenant="acme", approval_ids=approval_ids[::-1], tasks=4)
    killed.wait_for(5)
    killed.signal(signal.SIGKILL)
    reported = calls(killed.finish()) + calls(survivor.finish())

    gone = set(targets) - set(tenant_of(owner))
    table = SqlApprovalStore(owner, create_table=False).table
    with owner.connect() as conn:
        status = dict(conn.execute(select(table.c.id, table.c.status).where(table.c.id.in_(approval_ids))).all())
    target_of = dict(zip(approval_ids, targets, strict=True))
    records = [r for r in audit_records(owner, "apr") if r["tool_name"] == "delete" and r["outcome"] == "success"]
    done = Counter(r["inputs"]["approval_id"] for r in records)
    # Each approval ran at most once (its change and its record commit together), whichever process.
    assert max(done.values()) == 1
    assert {target_of[a] for a in done} == gone
    assert Counter(c["call"].split("-", 1)[1] for c in reported if c["outcome"] == "success") <= done
    for approval_id, target in target_of.items():
        # executed: run and recorded; executing: claimed by the killed process, run or not, never again
        assert status[approval_id] in ("executed", "executing"), status[approval_id]
        if status[approval_id] == "executed":
            assert target in gone
    # The survivor ran everything the killed process had not claimed.
    assert sum(1 for s in status.values() if s == "executing") <= 4  # at most one per task of the killed process
    assert len(gone) >= len(targets) - 4
