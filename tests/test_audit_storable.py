"""Every audit record can be stored and read back, by every store and reader.

- the sanitizer makes any value storable, bounded, with a visible marker where it cut;
- a record a store still refuses never blocks the others: split, fallback rendering, dead letter;
- JSONL: one record per line whatever the values hold; readers skip and count bad lines;
- `ormai-agents audit` shows markup and escape sequences, never interprets them;
- `redact_keys` hides values in snapshots and in the events sent to LangChain and LlamaIndex.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field
from sqlalchemy import JSON, Integer, String, create_engine, text, update
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from ormai_agents import (
    AuditUnavailableError,
    ModelPolicy,
    OrmAIError,
    Policy,
    Principal,
    RunContext,
    Toolset,
    WriteAction,
    WritePolicy,
)
from ormai_agents._storable import MAX_DEPTH, MAX_ITEMS, MAX_TEXT, REDACTED, clean
from ormai_agents.approvals import ApprovalGate, SqlApprovalStore
from ormai_agents.audit import (
    AuditRecord,
    JsonlAuditStore,
    MemoryAuditStore,
    SqlAuditStore,
    skeleton_record,
    storable_record,
)
from ormai_agents.cli import app
from ormai_agents.eval import Recorder, read_recording, replay
from tests import shop
from tests.conftest import ACME, BACKENDS, Backend, mysql_url, require_mysql
from tests.hostile_values import SPECIALS, hostile, nest
from tests.writes_support import count, ids, write_policy

runner = CliRunner()


# --- the sanitizer ------------------------------------------------------------------------------


def _walk(value: Any, depth: int = 0) -> tuple[int, list[str]]:
    """The depth of a JSON value and every string in it (keys included)."""
    if isinstance(value, dict):
        found = [(0, list(value))] + [_walk(v, depth + 1) for v in value.values()]
    elif isinstance(value, list):
        found = [_walk(v, depth + 1) for v in value]
    else:
        return depth, [value] if isinstance(value, str) else []
    return max([depth] + [d for d, _ in found]), [s for _, strings in found for s in strings]


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # reprs of huge examples
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile)
def test_any_value_becomes_strict_bounded_json(value: Any) -> None:
    out = clean(value)
    text = json.dumps(out, allow_nan=False, ensure_ascii=False)  # no NaN/Infinity, no recursion error
    text.encode("utf-8")  # no lone surrogate
    depth, strings = _walk(out)
    assert depth <= MAX_DEPTH + 1
    assert all("\x00" not in s and len(s) <= MAX_TEXT for s in strings)
    assert len(text) < 400_000


_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30)  # any text UTF-8 and PostgreSQL take


@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.floats(allow_nan=False, allow_infinity=False), _TEXT),
                    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=4)),
                    max_leaves=20))  # fmt: skip
def test_ordinary_values_are_kept_as_they_are(value: Any) -> None:
    assert clean(value) == value


def test_what_was_cut_is_marked() -> None:
    assert clean("a\x00b\ud800c") == "a\\u0000b\\ud800c"
    assert clean([math.inf, -math.inf, math.nan, 2**2000]) == ["inf", "-inf", "nan", "[TRUNCATED: an integer of 2001 bits]"]
    long = clean("x" * (MAX_TEXT + 10))
    assert len(long) == MAX_TEXT and long.startswith("x" * 4000) and long.endswith("…[TRUNCATED: 4106 characters]")
    assert clean(list(range(MAX_ITEMS + 5)))[-1] == "[TRUNCATED: 5 more items]"
    assert "[TRUNCATED: nested too deep]" in json.dumps(clean(nest(5000)))
    assert clean({"password": "p", "n": [{"api_password": 1}]}, lambda k: "password" in k) == {"password": REDACTED, "n": [{"api_password": REDACTED}]}


# --- stores: split, fallback, dead letter ------------------------------------------------------


def _poison(tenant: str = "acme", **kw: Any) -> AuditRecord:
    """A record a host built by hand, with values no store takes as they are."""
    return AuditRecord(tool_name="query", model="Order\x00", tenant_id=tenant, inputs={"v": ["\ud800", math.inf, "\x00", nest(3000)]},
                       error_message="\x00", error_code="e" * 500, **kw)  # fmt: skip


def _store(kind: str, backend: Backend, tmp_path: Path, **kw: Any) -> Any:
    if kind == "jsonl":
        return JsonlAuditStore(tmp_path / f"a-{uuid.uuid4().hex[:6]}.jsonl", **kw)
    engine = backend.sync_engine if kind == "sql-sync" else backend.async_engine
    return SqlAuditStore(engine, table_name=f"audit_{uuid.uuid4().hex[:10]}", **kw)


@pytest.mark.parametrize("kind", ["jsonl", "sql-sync", "sql-async"])
async def test_a_batch_with_a_poison_record_is_split_and_the_record_kept(kind: str, shop_backend: Backend, tmp_path: Path) -> None:
    store = _store(kind, shop_backend, tmp_path, batch_size=50, flush_interval=30)
    if isinstance(store, SqlAuditStore):
        await store.create_table()
    good = [AuditRecord(tool_name="query", model="Order", tenant_id="acme") for _ in range(7)]
    poison = _poison()
    for record in good[:3] + [poison] + good[3:]:
        await store.write_buffered(record)
    await store.flush()
    assert store.pending == 0 and store.fallbacks == 1 and store.dead_letters == 0
    stored = {r.id: r for r in await store.query(tenant_id="acme", limit=100)}
    assert set(stored) == {r.id for r in good} | {poison.id}
    kept = stored[poison.id]
    assert kept.model == "Order\\u0000" and kept.inputs["v"][:3] == ["\\ud800", "inf", "\\u0000"]
    # A durable write of such a record is stored too (in its fallback rendering).
    other = _poison(tenant="globex")
    await store.write(other)
    assert [r.id for r in await store.query(tenant_id="globex")] == [other.id]
    await store.aclose()


@pytest.mark.parametrize("kind", ["jsonl", "sql-sync", "sql-async"])
async def test_a_reader_waits_for_a_batch_a_timer_is_storing(kind: str, shop_backend: Backend, tmp_path: Path) -> None:
    # The flush timer takes the queue and is still storing it when a reader asks: the reader
    # must see those records, not only what was left in the queue (it once saw neither).
    store = _store(kind, shop_backend, tmp_path, batch_size=50, flush_interval=0.01)
    if isinstance(store, SqlAuditStore):
        await store.create_table()
    storing = asyncio.Event()
    store_many = store._store_many

    async def slow(records: list[AuditRecord]) -> None:
        storing.set()
        await asyncio.sleep(0.3)
        await store_many(records)

    store._store_many = slow
    store._batcher._store_many = slow
    queued = [AuditRecord(tool_name="query", model="Order", tenant_id="acme", request_id=f"r{i}") for i in range(3)]
    for record in queued:
        await store.write_buffered(record)
    await asyncio.wait_for(storing.wait(), 5)  # the timer has taken the batch
    assert store.pending == 3
    if not isinstance(store, SqlAuditStore):
        await store.flush()  # the JSONL store's query reads the files as they are
    found = await store.query(tenant_id="acme")
    assert sorted(r.request_id for r in found) == ["r0", "r1", "r2"] and store.pending == 0
    await store.aclose()


@pytest.fixture(params=["latin1", "utf8mb3"])
def narrow_mysql(request: pytest.FixtureRequest) -> Any:
    """A MariaDB database whose default character set can't hold every character."""
    require_mysql()
    database = f"ormai_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(mysql_url("pymysql"), poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE `{database}` CHARACTER SET {request.param}"))
    engines = create_engine(mysql_url("pymysql", database)), create_async_engine(mysql_url("aiomysql", database), poolclass=NullPool)
    yield engines
    engines[0].dispose()
    with admin.begin() as conn:
        conn.execute(text(f"DROP DATABASE `{database}`"))
    admin.dispose()


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
def test_the_audit_table_holds_any_text_whatever_the_databases_charset(narrow_mysql: Any) -> None:
    # The audit table is utf8mb4 on MySQL and MariaDB: records keep their values (no fallback).
    stores = [SqlAuditStore(engine, table_name="audit") for engine in narrow_mysql]
    loop = asyncio.new_event_loop()
    loop.run_until_complete(stores[0].create_table())
    written = iter(range(10**6))

    async def run(values: list[str], use_async: bool) -> None:
        store = stores[use_async]
        tenant = f"t{next(written)}-{values[0]}"
        record = storable_record(AuditRecord(tool_name="query", model=values[1], tenant_id=tenant, user_id=values[2],
                                             error_message=values[3], inputs={"v": values}, request_id=f"r-{values[0]}"))  # fmt: skip
        await store.write(record)
        (back,) = await store.query(tenant_id=record.tenant_id)
        assert (back.id, back.tenant_id, back.model, back.user_id, back.error_message, back.inputs, back.request_id) == (
            record.id, record.tenant_id, record.model, record.user_id, record.error_message, record.inputs, record.request_id)  # fmt: skip
        assert store.fallbacks == 0

    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.text(max_size=12), min_size=4, max_size=4).map(lambda v: [f"😀é日{v[0]}", *v[1:]]), st.booleans())
    def check(values: list[str], use_async: bool) -> None:
        loop.run_until_complete(run(values, use_async))

    async def approval() -> None:
        # The approval table too: an agent's pending change keeps its text.
        gate = ApprovalGate(SqlApprovalStore(narrow_mysql[1], table_name="approvals"), b"a" * 32)
        arguments = {"id": 1, "data": {"title": "😀 日本 é"}}
        pending = await gate.submit(Principal(tenant_id="acmé😀"), "update", "Order", arguments)
        stored = await gate.store.get(pending)  # type: ignore[union-attr]
        assert stored is not None and stored.arguments == arguments

    try:
        check()
        for store in stores:
            loop.run_until_complete(store.aclose())
        loop.run_until_complete(approval())
    finally:
        loop.close()
    # The last rendering keeps the request id too.
    assert skeleton_record(AuditRecord(tool_name="q", model=None, request_id="req-\u00fc\ud800")).request_id == "req-\\xfc\\ud800"


class _Refusing(JsonlAuditStore):
    """A medium that refuses one tenant's records in every rendering (as a broken column would)."""

    async def _store_many(self, records: list[AuditRecord]) -> None:
        if any(r.tenant_id == "refused" for r in records):
            raise ValueError("refused")
        await super()._store_many(records)


async def test_a_record_no_rendering_can_store_is_dropped_counted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = _Refusing(tmp_path / "a.jsonl", batch_size=10, flush_interval=30)
    refused = AuditRecord(tool_name="query", model="Order", tenant_id="refused", inputs={"secret": "v4lue-9"})
    with caplog.at_level(logging.WARNING, logger="ormai_agents"):
        for i in range(9):
            await store.write_buffered(refused if i == 4 else AuditRecord(tool_name="get", model=None, tenant_id="acme"))
        await store.flush()
        assert (store.pending, store.dead_letters) == (0, 1)  # never requeued
        assert len(await store.query(tenant_id="acme")) == 8
        # A durable write whose record is dropped raises: the toolset rolls the write back.
        with pytest.raises(Exception, match="could not be stored"):
            await store.write(AuditRecord(tool_name="create", model=None, tenant_id="refused"))
        assert store.dead_letters == 2
        await store.write(AuditRecord(tool_name="create", model=None, tenant_id="acme"))  # the others carry on
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "dropped audit record" in logged and "v4lue-9" not in logged and refused.id in logged
    await store.aclose()


async def test_an_unavailable_store_keeps_records_queued(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = JsonlAuditStore(blocker / "audit.jsonl", batch_size=10, flush_interval=30)
    for _ in range(3):
        await store.write_buffered(_poison())
    with pytest.raises(OSError):
        await store.flush()
    assert (store.pending, store.dead_letters, store.fallbacks) == (3, 0, 0)


@pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)
async def test_write_of_a_dropped_record_fails_the_write_closed(tmp_path: Path, wb: Backend, wdb1: Any) -> None:
    class RefuseWrites(JsonlAuditStore):
        async def _store_many(self, records: list[AuditRecord]) -> None:
            if any(r.tool_name == "create" for r in records):
                raise ValueError("refused")
            await super()._store_many(records)

    store = RefuseWrites(tmp_path / "w.jsonl")
    toolset = Toolset(shop.Base, write_policy(), store, secret_key=b"s" * 32)
    n = count(wb, shop.Order)
    with pytest.raises(AuditUnavailableError):
        await toolset.create(RunContext(ACME, wdb1), model="Order", data={"total": "1.00"})
    # Both records of the attempt were refused: the write's, then the failure's own.
    assert count(wb, shop.Order) == n and store.dead_letters == 2
    await toolset.update(RunContext(ACME, wdb1), model="Order", id=ids(wb, shop.Order, shop.Order.tenant_id == "acme")[0], data={"status": "x"})
    assert [r.tool_name for r in await store.query(tenant_id="acme")] == ["update"]


def test_storable_record_of_anything() -> None:
    odd = AuditRecord(tool_name=42, model={"x": 1}, outcome=None, timestamp="yesterday", roles="admin", inputs=[1],  # type: ignore[arg-type]
                      duration_ms=math.nan, row_count=2**80)  # fmt: skip
    safe = storable_record(odd)
    json.dumps(safe.to_dict(), allow_nan=False).encode("utf-8")
    assert (safe.tool_name, safe.model, safe.roles, safe.inputs, safe.duration_ms, safe.row_count) == ("42", '{"x":1}', ["admin"], {"value": [1]}, 0.0, None)
    assert json.loads(odd.to_json())["tool_name"] == "42"  # to_json never fails


# --- JSONL: lines and readers ------------------------------------------------------------------


async def test_jsonl_line_breaks_in_values_stay_inside_their_record(tmp_path: Path) -> None:
    store = JsonlAuditStore(tmp_path / "a.jsonl")
    records = [AuditRecord(tool_name="query", model=s, tenant_id="acme", inputs={"select": [s]}) for s in SPECIALS]
    for record in records:
        await store.write(storable_record(record))
    data = store.path.read_bytes()
    assert data.count(b"\n") == len(records)
    assert not any(c.encode() in data for c in "\u2028\u2029\x85\x7f\x1b")
    back = {r.id: r for r in await store.query(limit=1000)}
    assert [back[r.id].model for r in records] == [storable_record(r).model for r in records]
    assert store.skipped_lines == 0


def test_jsonl_readers_skip_count_and_report_bad_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "a.jsonl"
    good = [AuditRecord(tool_name="get", tenant_id="acme", model=f"M{i}") for i in range(3)]
    bad = [
        b"not json", b"[1, 2]", b"5", b'{"tool_name": 5}', b'{"tool_name": "x", "timestamp": 7}',
        b'{"tool_name": "x", "timestamp": "not a date"}', b"\xff\xfe garbage", b'{"tool_name": "x", "inputs": []}',
        b'{"tool_name": "x", "tenant_id": "acme", "timestamp": "2999-01-01T00:00:00+00:00", "outcome": {"a": 1}}',
        b"[" * 100_000,
    ]  # fmt: skip
    lines = [good[0].to_json().encode(), *bad[:5], good[1].to_json().encode(), *bad[5:], good[2].to_json().encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    store = JsonlAuditStore(path)
    with caplog.at_level(logging.WARNING, logger="ormai_agents"):
        found = asyncio.run(store.query(tenant_id="acme"))
    assert sorted(r.model for r in found) == ["M0", "M1", "M2"]
    assert store.skipped_lines == len(bad)
    assert any(f"skipped {len(bad)} unreadable" in r.getMessage() for r in caplog.records)
    out = runner.invoke(app, ["audit", "--store", f"jsonl:{path}", "--tenant", "acme", "--json"])
    assert out.exit_code == 0 and len(out.stdout.splitlines()) == 3
    assert f"skipped {len(bad)} unreadable line(s)" in out.stderr
    # Retention keeps the unreadable lines for a human to look at, and drops nothing else.
    assert asyncio.run(store.delete_before(good[0].timestamp)) == 0
    assert path.read_bytes().count(b"\n") == len(lines)


async def test_recordings_write_one_line_per_call_and_skip_bad_lines(tmp_path: Path, shop_backend: Backend) -> None:
    path = tmp_path / "rec.jsonl"
    toolset = Toolset(shop.Base, shop.shop_policy(), secret_key=b"r" * 32)
    recording = Recorder(path, redact=False).wrap(toolset)
    with shop_backend.session() as db:
        for special in SPECIALS:
            try:
                await recording.query(RunContext(ACME, db), model="Order", filters=[{"field": "status", "op": "eq", "value": special}],
                                      select=[special, "\ud800", math.inf])  # fmt: skip
            except OrmAIError:
                pass  # refusals are recorded too
    with path.open("ab") as fh:
        fh.write(b"{torn line\n[1]\n")
    calls, skipped = read_recording(path)
    assert (len(calls), skipped) == (len(SPECIALS), 2)
    with shop_backend.session() as db:
        report = await replay(path, toolset, db)
    assert report.unreadable == 2 and "2 unreadable lines skipped" in report.summary()


# --- the CLI shows what agents sent, never interprets it -------------------------------------------


def test_cli_escapes_markup_and_terminal_sequences(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    nasty = "\x1b]8;;https://127.0.0.1/\x07[bold red]x[/]\x1b[2J\u202e"
    record = AuditRecord(tool_name=nasty, model=nasty, tenant_id="acme", user_id=nasty, outcome="denied", error_code=nasty,
                         scopes_injected=[nasty], policies_applied=[nasty])  # fmt: skip
    asyncio.run(JsonlAuditStore(path).write(record))
    out = runner.invoke(app, ["audit", "--store", f"jsonl:{path}", "--tenant", "acme"], env={"COLUMNS": "600"})
    assert out.exit_code == 0, out.output
    assert "\x1b" not in out.output and "\x07" not in out.output and "\u202e" not in out.output
    assert "[bold red]x[/]" in out.output and "\\x1b[2J" in out.output and "\\u202e" in out.output
    as_json = runner.invoke(app, ["audit", "--store", f"jsonl:{path}", "--tenant", "acme", "--json"])
    assert "\x1b" not in as_json.output and json.loads(as_json.output)["model"] == nasty


# --- redact_keys everywhere a record goes ------------------------------------------------------


class _Base(DeclarativeBase):
    pass


class Account(_Base):
    __tablename__ = "audit_redact_accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(40))
    api_secret: Mapped[str | None] = mapped_column(String(80))
    prefs: Mapped[Any] = mapped_column(JSON, nullable=True)


SECRET = "S3CR3T-snap"
ACCOUNTS = Policy(
    models={
        "Account": ModelPolicy(
            fields={"id": "allow", "tenant_id": "allow", "name": "allow", "api_secret": "allow", "prefs": "allow"},
            scoping={"tenant_id": "principal.tenant_id"},
            write_policy=WritePolicy(create=WriteAction.Allow, update=WriteAction.Allow, auto_set={"tenant_id": "principal.tenant_id"}),
        )
    },
    redact_keys=["secret", "password"],
)


@pytest.fixture
def accounts(shop_backend: Backend) -> Any:
    _Base.metadata.create_all(shop_backend.sync_engine)
    yield shop_backend
    _Base.metadata.drop_all(shop_backend.sync_engine)


async def test_redact_keys_hide_snapshot_values_in_every_destination(accounts: Backend, tmp_path: Path) -> None:
    from langchain_core.callbacks import BaseCallbackHandler
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler

    from ormai_agents.langchain import AUDIT_EVENT, OrmAIToolkit
    from ormai_agents.llamaindex import OrmAIAuditEvent, OrmAIToolSpec

    jsonl, memory = JsonlAuditStore(tmp_path / "a.jsonl"), MemoryAuditStore()
    seen: list[Any] = []

    class Both:
        async def write(self, record: AuditRecord) -> None:
            await jsonl.write(record)
            await memory.write(record)

        async def query(self, **kw: Any) -> list[AuditRecord]:
            return await memory.query(**kw)

    toolset = Toolset(_Base, ACCOUNTS, Both(), secret_key=b"k" * 32)
    prefs = {"password": SECRET, "theme": "dark", "deep": [{"my_secret": SECRET}]}
    with accounts.session() as db:
        created = await toolset.create(RunContext(ACME, db, on_audit=seen.append), model="Account", data={"name": "n", "api_secret": SECRET})
        assert created.data["api_secret"] == SECRET  # the agent may read it: only the logs hide it
        key = created.data["id"]
        db.execute(update(Account).where(Account.id == key).values(prefs=prefs))  # JSON written by the application
        db.commit()
        await toolset.update(RunContext(ACME, db, on_audit=seen.append), model="Account", id=key, data={"name": "m"})
    class LcEvents(BaseCallbackHandler):
        def __init__(self) -> None:
            self.events: list[Any] = []

        def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            self.events.append(data) if name == AUDIT_EVENT else None

    lc = LcEvents()
    tools = {t.name: t for t in OrmAIToolkit(toolset=toolset, session_factory=sessionmaker(accounts.sync_engine)).get_tools(ACME)}
    await tools["update_account"].ainvoke({"id": key, "data": {"name": "lc"}}, config={"callbacks": [lc]})

    class LiEvents(BaseEventHandler):
        events: list[Any] = Field(default_factory=list)

        @classmethod
        def class_name(cls) -> str:
            return "RedactionEvents"

        def handle(self, event: Any, **kwargs: Any) -> None:
            if isinstance(event, OrmAIAuditEvent):
                self.events.append(event.record)

    li = LiEvents()
    root = get_dispatcher()
    root.add_event_handler(li)
    try:
        spec = OrmAIToolSpec(toolset=toolset, session_factory=async_sessionmaker(accounts.async_engine))
        change = next(t for t in spec.get_tools(ACME) if t.metadata.name == "update_account")
        assert not (await change.acall(id=key, data={"name": "li"})).is_error
    finally:
        root.event_handlers.remove(li)

    assert len(seen) == 2 and len(lc.events) == 1 and len(li.events) == 1 and len(memory.records) == 4
    everything = [json.dumps(r.to_dict()) for r in seen + memory.records] + [json.dumps(e, default=str) for e in lc.events + li.events]
    everything.append((tmp_path / "a.jsonl").read_text())
    assert not any(SECRET in text for text in everything)
    snapshot = seen[1].before
    assert snapshot is not None and snapshot["api_secret"] == REDACTED and snapshot["prefs"]["password"] == REDACTED
    assert snapshot["prefs"]["theme"] == "dark" and snapshot["prefs"]["deep"] == [{"my_secret": REDACTED}]
    for event in lc.events + li.events:
        assert event["after"]["api_secret"] == REDACTED and event["before"]["prefs"]["password"] == REDACTED
