"""The write path: create, update, delete and bulk_update under a model's `WritePolicy`.

Each call is validated in full before any statement runs (`ormai_agents._write_plan`: unknown,
denied, masked, hashed, server-set and immutable fields are refused), then runs in one
transaction:

- update, delete and bulk_update change rows with ONE statement whose WHERE clause carries the
  primary key (or the agent's filters), the scoping and the restrict policies. A snapshot read
  before it (locked with FOR UPDATE where the database supports it) only feeds the audit record,
  and an update reads none when no audit store or callback will see it; whether a row is changed
  is decided by the write statement's own WHERE clause.
- creates and updates re-select the written row by primary key under the same clauses in the same
  transaction (PostgreSQL's WITH CHECK), in RETURNING where the database has it: a row that left
  the principal's scope is rolled back.
- foreign keys the agent sets are checked against rows the principal may see, as whole tuples.
- the audit record is stored before the commit; when it can't be stored the write is rolled back.

Transactions: when the handle has no transaction open, the call begins one and commits it; when a
transaction is open (the host began one, or SQLAlchemy auto-began one for an earlier statement),
the call runs in a SAVEPOINT and the commit stays with the host. Transient failures are retried
only in the first case and only before COMMIT: a write whose commit may have reached the server
is never sent again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Date,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    null,
    true,
    tuple_,
    update,
)
from sqlalchemy import select as sql_select
from sqlalchemy import types as sqltypes

from ormai_agents._call import Call
from ormai_agents._context import Principal, RunContext
from ormai_agents._db import DbHandle
from ormai_agents._dberrors import retrying
from ormai_agents._dialects import Capabilities, exact_equals
from ormai_agents._errors import (
    ApprovalError,
    ApprovalRequiredError,
    CallTimeoutError,
    OrmAIError,
    RecordNotFoundError,
    TransientDatabaseError,
    ValidationError,
    WriteNotAllowedError,
    WriteOutcomeUnknownError,
)
from ormai_agents._plan import ModelPlan, Where
from ormai_agents._redact import redact_snapshot
from ormai_agents._results import WriteResult
from ormai_agents._runtime import Runtime, Shaper
from ormai_agents._storable import MAX_BUDGET, MAX_TEXT
from ormai_agents._write_plan import (
    OPERATIONS,
    Change,
    WritePlan,
    auto_values,
    normalize_arguments,
    parse_change,
    write_action,
)
from ormai_agents.audit import SqlAuditStore
from ormai_agents.policy import FieldAction, WriteAction

if TYPE_CHECKING:
    from ormai_agents.approvals import Approval

log = logging.getLogger("ormai_agents")

_WRITE_ATTEMPTS = 3
_FIRST_WAIT = 0.05  # seconds before the first retry, then doubling (see `retrying`)
_CHECK_FAILED = (
    "The change was rolled back: the {model} record would no longer be one you may access "
    "(outside your scope or a row policy). Nothing was written."
)


# --- the call -----------------------------------------------------------------------------


def precheck(runtime: Runtime, model: Any, op: str, args: Mapping[str, Any]) -> None:
    """Everything `perform` checks before touching the database, without a database."""
    plan = runtime.plan(model)
    write_action(plan, op)
    parse_change(runtime.write_plans[plan.name], op, normalize_arguments(op, args))


async def perform(call: Call, args: dict[str, Any], approval: Approval | None = None) -> WriteResult:
    """Run one write tool call (`call.tool` is the operation) under the current policy."""
    runtime = call.runtime
    op = call.tool
    plan = call.plan = runtime.plan(call.model)
    action = write_action(plan, op)
    principal = call.ctx.principal
    where = call.where = plan.where(principal)
    wplan = runtime.write_plans[plan.name]
    if action is WriteAction.RequireApproval and approval is None:
        args = normalize_arguments(op, args)  # the JSON form is what is stored, approved and run
        return await _submit(call, wplan, where, parse_change(wplan, op, args), args)
    change = parse_change(wplan, op, args)
    if approval is not None and not await runtime.approvals.claim(approval):
        raise ApprovalError("That approval has already been used or is no longer approved. Nothing was written.")
    try:
        result = await _in_transaction(call, lambda: _Write(call, wplan, where, change).run())
    except BaseException as exc:
        if approval is not None:
            await runtime.approvals.finish(approval, exc)
        raise
    if approval is not None:
        await runtime.approvals.finish(approval, None)
    return result


async def _submit(call: Call, wplan: WritePlan, where: Where, change: Change, args: dict[str, Any]) -> WriteResult:
    """Submit a write for approval; nobody is asked to approve a write that can't happen: the
    record it names must be one the principal may change (a bulk update matching nothing changes
    nothing, unapproved)."""
    plan, op = wplan.plan, change.op
    fresh = call.owns_transaction()
    exists = await _target_exists(wplan, where, change, call.db, call.deadline)
    if fresh:  # the check's read began the transaction: end it, the host's session stays as it was
        await call.db.rollback()
    if not exists:
        if op != "bulk_update":
            raise _not_found(plan)
        call.row_count = 0
        return WriteResult({"updated_count": 0})
    approval_id = await call.runtime.approvals.submit(call.ctx.principal, op, plan.name, args)
    raise ApprovalRequiredError(
        f"This {op} on {plan.name} needs a person's approval before it runs, so nothing was written yet. "
        f"It was submitted for approval with id {approval_id}.",
        approval_id=approval_id,
    )


async def execute_approved(call: Call, approval_id: Any) -> WriteResult:
    """Run the write an approval names, exactly as it was submitted, under the current policy."""
    if call.owns_transaction() and call.db.in_transaction():
        # The approval store has connections of its own. The call's transaction (begun here by
        # the row-level security settings) ends before it is reached, so the call never holds a
        # connection while it waits for another: a small pool, or a pooler's few server
        # connections, taken by calls each waiting for one more would never free up. The write
        # begins a new transaction, with the settings set again.
        await call.db.rollback()
    approval = await call.runtime.approvals.load(approval_id, call.ctx.principal)
    call.tool = approval.tool
    call.model = approval.model
    call.inputs = {**approval.arguments, "approval_id": approval.id}
    return await perform(call, dict(approval.arguments), approval=approval)


async def target_exists(runtime: Runtime, ctx: RunContext, model: Any, op: str, args: Mapping[str, Any]) -> bool:
    """`_target_exists` for a write's arguments (see `Toolset.write_target_exists`)."""
    plan = runtime.plan(model)
    write_action(plan, op)
    wplan = runtime.write_plans[plan.name]
    change = parse_change(wplan, op, normalize_arguments(op, args))
    db = DbHandle(ctx.db)
    fresh = not db.in_transaction()
    try:
        return await _target_exists(wplan, plan.where(ctx.principal), change, db, None)
    finally:
        if fresh:  # a read of ours began the transaction: leave the session as it was
            await _quiet_rollback(db.rollback)


def _not_found(plan: ModelPlan) -> RecordNotFoundError:
    return RecordNotFoundError(
        f"No {plan.name} with that id is visible to you, or you may only read it. Use query to find "
        "the records you can see."
    )


async def _target_exists(wplan: WritePlan, where: Where, change: Change, db: DbHandle, deadline: float | None) -> bool:
    """Whether the record an update or delete names (a record a bulk update's filters match) is
    one the principal may change; True for a create."""
    if change.op == "create":
        return True
    plan = wplan.plan
    assert wplan.table is not None
    if change.key is not None:
        match = [c == v for c, v in zip(plan.pk_columns, change.key, strict=True)]
    else:
        match = change.filters
    stmt = sql_select(*plan.pk_columns).select_from(wplan.table).where(*match, *where.write_clauses).limit(1)
    return bool(await db.fetch(stmt, deadline=deadline, action="write"))


# --- the statements of one write ------------------------------------------------------------


@dataclass
class _Write:
    """One validated write, run inside the call's transaction (see `_in_transaction`)."""

    call: Call
    wplan: WritePlan
    where: Where
    change: Change

    def __post_init__(self) -> None:
        plan = self.wplan.plan
        assert self.wplan.table is not None
        self.table: Table = self.wplan.table
        self.plan: ModelPlan = plan
        self.principal = self.call.ctx.principal
        self.names = list(plan.fields)
        self.width = len(self.names)  # the shaped columns; the check follows them
        self.shape: Shaper = self.call.runtime.shaper(plan, self.names)
        auto = {"create": self.wplan.auto_create, "delete": {}}.get(self.change.op, self.wplan.auto_update)
        self.server = auto_values(auto, self.principal)
        written = {**self.change.values, **self.server}
        # Written values go to the statement as bind parameters, so the statement itself can be
        # cached per principal and set of written fields (see `Runtime.statement`).
        self.value_names = tuple(sorted(written))
        self.params = {f"ormai_v{i}": written[n] for i, n in enumerate(self.value_names)}
        if self.change.key is not None:
            self.params.update({f"ormai_k{i}": v for i, v in enumerate(self.change.key)})
        # The current values of the foreign-key columns, to check composite keys as whole tuples.
        self.refs = self.wplan.reference_columns
        self.checks_references = any(n in self.change.values for ref in self.wplan.references for n in ref.names)

    async def run(self) -> WriteResult:
        # Where the database has RETURNING, the WITH CHECK is part of the write statement:
        # RETURNING evaluates the policy clauses on the written row. Otherwise the row is
        # re-selected by key in the same transaction.
        self.caps: Capabilities = self.call.db.capabilities()
        op = self.change.op
        if op == "create":
            return await self.create()
        if op == "delete":
            return await self.delete()
        if op == "update":
            return await self.update()
        return await self.bulk_update()

    def exec(self, stmt: Any, params: Mapping[str, Any] | None = None) -> Awaitable[Any]:
        return self.call.db.execute(stmt, params, deadline=self.call.deadline)

    def statement(self, kind: str, build: Callable[[], Any]) -> Any:
        """The write statement of this shape, built once per principal, model and written fields."""
        key = ("write", kind, self.plan.name, self.principal, self.value_names)
        return self.call.runtime.statement(key, build)

    @property
    def columns(self) -> list[Any]:
        return [self.plan.fields[n].column.label(n) for n in self.names]

    @property
    def check(self) -> Any:
        clauses = self.where.write_clauses
        return (and_(*clauses) if clauses else true()).label("_check")

    def key_binds(self) -> list[Any]:
        return [c == bindparam(f"ormai_k{i}", type_=c.type) for i, c in enumerate(self.plan.pk_columns)]

    def value_binds(self) -> dict[Any, Any]:
        columns = self.plan.columns
        return {
            columns[n]: bindparam(f"ormai_v{i}", type_=columns[n].type) for i, n in enumerate(self.value_names)
        }

    def by_key(self, key: Any) -> list[Any]:
        return [c == v for c, v in zip(self.plan.pk_columns, key, strict=True)]

    def snapshot(self, *conditions: Any, lock: bool = False) -> Any:
        stmt = sql_select(*self.columns, self.check).select_from(self.table)
        stmt = stmt.where(*conditions, *self.where.write_clauses)
        return stmt.with_for_update() if lock else stmt

    def snapshot_by_key(self, *, lock: bool = False) -> Any:
        """The row the call names, under the write clauses (with the foreign-key columns when
        locked for an update that checks references)."""

        def build() -> Any:
            stmt = self.snapshot(*self.key_binds(), lock=lock)
            if lock:
                stmt = stmt.add_columns(*self.ref_columns())
            return stmt

        return self.statement("snapshot-lock" if lock else "snapshot", build)

    def ref_columns(self) -> list[Any]:
        return [self.plan.columns[n].label(f"_ref_{i}") for i, n in enumerate(self.refs)]

    def current(self, row: Any, start: int) -> dict[str, Any]:
        return dict(zip(self.refs, row[start : start + len(self.refs)], strict=True))

    async def references(self, rows: list[Mapping[str, Any]]) -> None:
        await _check_references(self.wplan, self.change.values, self.server, rows, self.principal, self.exec)

    def check_failed(self, many: bool = False) -> WriteNotAllowedError:
        message = _CHECK_FAILED.format(model=self.plan.name)
        return WriteNotAllowedError(message.replace("record would", "records would") if many else message)

    def done(self, row: Any, *, before: bool = False) -> WriteResult:
        data = self.shape(row)
        if before:
            self.call.before = data
        else:
            self.call.after = data
        self.call.row_count = 1
        return WriteResult(dict(data))

    async def create(self) -> WriteResult:
        await self.references([{}])
        returning = self.caps.insert_returning
        fold = self._fold() if returning else None

        def build() -> Any:
            stmt = insert(self.table).values(self.value_binds())
            if not returning:
                return stmt
            stmt = stmt.returning(*self._returned("ormai_a"), self.check)
            return stmt if fold is None else self._with_record(fold[0], stmt, before=False)

        stmt = self.statement(f"create-{returning}{'-record' if fold else ''}", build)
        if returning:
            rows = await self._returning(stmt, fold)
        else:
            key = self._inserted_key(await self.exec(stmt, self.params))
            if key and None not in key:
                self.params.update({f"ormai_k{i}": v for i, v in enumerate(key)})
                rows = (await self.exec(self.snapshot_by_key(), self.params)).all()
            else:
                rows = []
        if not rows or not rows[0][self.width]:
            raise self.check_failed()  # rolled back (with the record, when it is in the statement)
        return self.done(rows[0])

    def _inserted_key(self, result: Any) -> list[Any]:
        # Key values the call wrote are known here (SQLAlchemy can't tell them from the named
        # bind parameters); a generated one comes from the driver.
        written = {n: self.params[f"ormai_v{i}"] for i, n in enumerate(self.value_names)}
        attrs = {c: k for k, c in self.plan.columns.items()}
        names = [attrs.get(c) for c in self.plan.pk_columns]
        if all(n in written for n in names):
            return [written[n] for n in names]  # type: ignore[index]
        generated = list(result.inserted_primary_key or ())
        return [written.get(n, g) for n, g in zip(names, generated, strict=False)]  # type: ignore[arg-type]

    async def delete(self) -> WriteResult:
        returning = self.caps.delete_returning

        def build() -> Any:
            stmt = delete(self.table).where(*self.key_binds(), *self.where.write_clauses)
            return stmt.returning(*self.columns) if returning else stmt

        stmt = self.statement(f"delete-{returning}", build)
        if returning:
            rows = (await self.exec(stmt, self.params)).all()
        else:
            rows = (await self.exec(self.snapshot_by_key(lock=True), self.params)).all()
            if rows and (await self.exec(stmt, self.params)).rowcount != 1:
                rows = []
        if not rows:
            raise _not_found(self.plan)
        return self.done(rows[0], before=True)

    async def update(self) -> WriteResult:
        returning = self.caps.update_returning
        if returning and not self.checks_references:
            return await self._update_folded(self._fold())
        # The before snapshot is for the audit record only (and the current foreign keys for the
        # reference check); the UPDATE decides by its own WHERE. Nobody to read it: not read.
        call = self.call
        before: list[Any] = []
        if self.checks_references or call.runtime.audit_store is not None or call.ctx.on_audit is not None:
            before = (await self.exec(self.snapshot_by_key(lock=True), self.params)).all()
            if not before:
                raise _not_found(self.plan)
            call.before = self.shape(before[0])
            await self.references([self.current(before[0], self.width + 1)])

        def build() -> Any:
            stmt = update(self.table).where(*self.key_binds(), *self.where.write_clauses).values(self.value_binds())
            return stmt.returning(*self.columns, self.check) if returning else stmt

        stmt = self.statement(f"update-{returning}", build)
        if returning:
            after = (await self.exec(stmt, self.params)).all()
        else:
            if (await self.exec(stmt, self.params)).rowcount != 1:
                raise _not_found(self.plan)
            # Updated but no longer visible under the policy: the check fails.
            after = (await self.exec(self.snapshot_by_key(), self.params)).all()
            if not after:
                raise self.check_failed()
        if not after:
            raise _not_found(self.plan)
        if not after[0][self.width]:
            raise self.check_failed()
        return self.done(after[0])

    async def _update_folded(self, fold: tuple[SqlAuditStore, dict[str, Any]] | None) -> WriteResult:
        """One statement where the database has UPDATE ... FROM and RETURNING: the row as it was
        (read and locked under the write clauses), the change, and the row as it is now with its
        WITH CHECK, in one round trip; with `fold`, the call's audit record inserted too."""

        def build() -> Any:
            plan, width = self.plan, self.width
            old = (
                sql_select(*self._returned("ormai_b"), *plan.pk_columns)
                .where(*self.key_binds(), *self.where.write_clauses)
                .with_for_update()
                .subquery("ormai_old")
            )
            old_pk = list(old.c)[width:]
            written = (
                update(self.table)
                .where(*(c == o for c, o in zip(plan.pk_columns, old_pk, strict=True)), *self.where.write_clauses)
                .values(self.value_binds())
                .returning(*list(old.c)[:width], *self._returned("ormai_a"), self.check)
            )
            return written if fold is None else self._with_record(fold[0], written, before=True)

        rows = await self._returning(self.statement(f"update-folded{'-record' if fold else ''}", build), fold)
        if not rows:
            raise _not_found(self.plan)
        row, width = rows[0], self.width
        self.call.before = self.shape(row[:width])
        if not row[2 * width]:
            raise self.check_failed()  # rolled back (with the record, when it is in the statement)
        return self.done(row[width:])

    def _store_to_fold(self) -> SqlAuditStore | None:
        """The SQL audit store whose INSERT this write's own statement can carry (PostgreSQL):
        the call's own transaction (on a failure it is rolled back and the write run again
        unfolded), the store keeping records in the caller's transaction, no `on_audit`
        callback (it is handed the record the toolset builds), and snapshot fields the database
        writes into JSON exactly as the record would hold them (`_snapshot_kinds`)."""
        call = self.call
        store = call.runtime.audit_store
        if not call.may_fold or call.ctx.on_audit is not None or not isinstance(store, SqlAuditStore):
            return None
        if self.caps.name != "postgresql" or not store.uses_caller_transaction(call.ctx.db):
            return None
        return store if self._snapshot_kinds() else None

    def _snapshot_kinds(self) -> tuple[str, ...]:
        runtime = self.call.runtime
        return runtime.statement(("snapshot-kinds", self.plan.name), lambda: _snapshot_kinds(self.plan, runtime))  # type: ignore[no-any-return]

    def _fold(self) -> tuple[SqlAuditStore, dict[str, Any]] | None:
        """The store whose INSERT this write's statement carries, with the bound values of the
        call's record; None when the record is stored the usual way (no store to fold, or a
        value the store renders another way)."""
        store = self._store_to_fold()
        if store is None:
            return None
        record = self.call.success_record()
        try:
            return None if record is None else (store, store.folded_insert_params(record))
        except (ValueError, TypeError, RecursionError, AttributeError):
            return None

    def _with_record(self, store: SqlAuditStore, written: Any, *, before: bool) -> Any:
        """`written` (a write whose RETURNING holds the old row's fields when `before`, the new
        row's, then the check, each labelled apart) beside the INSERT of the call's record, in
        one statement (a data-modifying CTE): the record's snapshots are written by the database
        from the returned rows."""
        width, kinds = self.width, self._snapshot_kinds()
        cte = written.cte("ormai_write")
        out = list(cte.c)
        new = out[width : 2 * width] if before else out[:width]
        old = _snapshot_json(self.names, kinds, out[:width]) if before else null()
        record = store.folded_insert(cte, old, _snapshot_json(self.names, kinds, new))
        return sql_select(*out).add_cte(record.cte("ormai_audit"))

    def _returned(self, prefix: str) -> list[Any]:
        return [self.plan.fields[n].column.label(f"{prefix}{i}") for i, n in enumerate(self.names)]

    async def _returning(self, stmt: Any, fold: tuple[SqlAuditStore, dict[str, Any]] | None) -> list[Any]:
        """The rows a write's RETURNING gives (the check last); with `fold`, its statement also
        inserts the call's record, bound from the fold's values."""
        if fold is None:
            return list((await self.exec(stmt, self.params)).all())
        try:
            rows = (await self.exec(stmt, {**self.params, **fold[1]})).all()
        except (TransientDatabaseError, CallTimeoutError):
            raise
        except OrmAIError as exc:
            # Which part failed (the change, or the record: its table missing, say) and what the
            # agent is told is for the unfolded write to find out, in a new transaction.
            raise FoldFailedError from exc
        if rows and rows[0][-1]:
            self.call.audit_folded = True  # stored, unless the check fails and it is rolled back
        return list(rows)

    async def bulk_update(self) -> WriteResult:
        # Lock and count the matching rows first, so an over-limit call writes nothing.
        plan, call = self.plan, self.call
        limit = plan.policy.write_policy.max_affected_rows
        pk_labels = [c.label(f"_pk{i}") for i, c in enumerate(plan.pk_columns)]
        stmt = (
            sql_select(*self.columns, self.check, *pk_labels, *self.ref_columns())
            .select_from(self.table)
            .where(*self.where.write_clauses, *self.change.filters)
            .order_by(*plan.pk_columns)
            .limit(limit + 1)
            .with_for_update()
        )
        before = (await self.exec(stmt)).all()
        if len(before) > limit:
            raise ValidationError(
                f"This bulk_update would change more than {limit} {plan.name} records, the most one call may "
                "change. Nothing was written. Narrow the filters, or update records one at a time."
            )
        call.before = {"rows": [self.shape(r) for r in before]}
        if not before:
            call.row_count = 0
            call.after = {"updated_count": 0}
            return WriteResult({"updated_count": 0})
        start, npk = self.width + 1, len(pk_labels)
        keys = [tuple(r[start : start + npk]) for r in before]
        await self.references([self.current(r, start + npk) for r in before])
        count, after = await self._update_rows(keys)
        if count != len(keys):
            # Rows changed between the count and the write (only where FOR UPDATE is not supported).
            raise TransientDatabaseError(
                "The records changed while they were being updated. Nothing was written; try again."
            )
        if len(after) != count or not all(r[self.width] for r in after):
            raise self.check_failed(many=True)
        call.after = {"updated_count": count, "rows": [self.shape(r) for r in after]}
        call.row_count = count
        return WriteResult({"updated_count": count})

    async def _update_rows(self, keys: list[tuple[Any, ...]]) -> tuple[int, list[Any]]:
        """UPDATE the rows with these keys; (how many changed, the changed rows with their check)."""
        pk = self.plan.pk_columns
        in_keys = pk[0].in_([k[0] for k in keys]) if len(pk) == 1 else tuple_(*pk).in_(keys)
        values = {self.plan.columns[n]: self.params[f"ormai_v{i}"] for i, n in enumerate(self.value_names)}
        stmt = update(self.table).where(in_keys, *self.where.write_clauses, *self.change.filters).values(values)
        if self.caps.update_returning:
            after = (await self.exec(stmt.returning(*self.columns, self.check))).all()
            return len(after), list(after)
        count = (await self.exec(stmt)).rowcount
        after = list((await self.exec(self.snapshot(in_keys))).all())
        return count, (after if len(after) >= count else [])  # fewer: some are no longer visible


async def _check_references(
    wplan: WritePlan,
    sent: Mapping[str, Any],
    server: Mapping[str, Any],
    rows: list[Mapping[str, Any]],
    principal: Principal,
    run: Callable[[Any], Awaitable[Any]],
) -> None:
    """Every foreign key the agent sets must point at a row the principal may see.

    Otherwise an agent could attach its rows to another tenant's records, and learn which ids
    exist elsewhere from the difference between "linked" and "constraint error". A composite key
    is checked as one tuple: the values written (`sent` by the agent, set by the `server`) over
    the current values of each changed row (`rows`; one empty row for a create). A tuple with a NULL
    refers to nothing (as the database sees it). The referenced row is locked (FOR SHARE) so it
    can't leave the scope before the commit.
    """
    values = {**server, **sent}
    for ref in wplan.references:
        named = [n for n in ref.names if n in sent]
        if not named:
            continue  # the agent changes none of it
        wanted = {tuple(values[n] if n in values else row.get(n) for n in ref.names) for row in rows}
        twhere = ref.target.where(principal)
        for key in sorted((k for k in wanted if None not in k), key=repr):
            stmt = (
                sql_select(*ref.remote)
                .select_from(ref.target.selectable)
                .where(*(exact_equals(c, v) for c, v in zip(ref.remote, key, strict=True)), *twhere.write_clauses)
                .limit(1)
                .with_for_update(read=True)
            )
            if not (await run(stmt)).all():
                where = f"no {ref.target.name} with that id" if ref.exposed else "no record with that id"
                hint = f" Use query on {ref.target.name} to find one." if ref.exposed else ""
                raise ValidationError(f"data.{named[0]}: {where} is visible to you. Nothing was written.{hint}")


# --- the audit record in the write's own statement ------------------------------------------


class FoldFailedError(Exception):
    """A write whose statement carried its audit record failed: run it again without."""


# jsonb_build_object takes at most 100 arguments: 50 fields.
_MAX_FOLDED_FIELDS = 50


def _snapshot_kinds(plan: ModelPlan, runtime: Runtime) -> tuple[str, ...]:
    """How PostgreSQL writes each field of a write's snapshot into the record's JSON so that it
    reads exactly as the record built in Python would ("value": as it is; "text": cast to text,
    as `Decimal` becomes its `str`; "date" and "datetime": as `isoformat()` writes them; "cut":
    text without a bound, cut past MAX_TEXT as `clean_text` cuts it); empty when some field can't
    be written so. Such fields: a masked or hashed one, one whose name the audit redacts, types
    whose JSON differs (timestamps with a time zone, times, floats, JSON, enums, CHAR's padding,
    custom types), decimals that `str` writes with an exponent (more than 6 places), and rows
    that could pass the record's size budget (where the walk would cut what comes after)."""
    names = list(plan.fields)
    if not names or len(names) > _MAX_FOLDED_FIELDS:
        return ()
    if redact_snapshot(dict.fromkeys(names), runtime.redact_keys) != dict.fromkeys(names):
        return ()
    kinds: list[str] = []
    size = 0
    for name in names:
        field = plan.fields[name]
        if field.action is not FieldAction.Allow or not name.isascii() or len(name) > 200:
            return ()
        found = _snapshot_kind(field.column.type)
        if found is None:
            return ()
        kinds.append(found[0])
        size += len(name) + 1 + found[1]
    return tuple(kinds) if size <= MAX_BUDGET - MAX_TEXT else ()


def _snapshot_kind(type_: Any) -> tuple[str, int] | None:
    """(kind, the most characters it takes in the record) of a column type; None: not written so."""
    if isinstance(type_, (sqltypes.Boolean, sqltypes.Integer)):
        return "value", 1
    if isinstance(type_, sqltypes.Numeric) and not isinstance(type_, sqltypes.Float):
        scale = type_.scale
        if not type_.asdecimal or scale is None or not 0 <= scale <= 6 or type_.precision is None:
            return None
        return "text", type_.precision + 2
    if isinstance(type_, sqltypes.DateTime):
        return None if type_.timezone else ("datetime", 26)  # naive: no offset to match
    if isinstance(type_, sqltypes.Date):
        return "date", 10
    if isinstance(type_, sqltypes.String) and not isinstance(type_, (sqltypes.Enum, sqltypes.CHAR)):
        if type_.length is None or type_.length > MAX_TEXT:
            return "cut", MAX_TEXT  # longer text is cut as the record cuts it
        return "value", type_.length
    return None


def _snapshot_json(names: list[str], kinds: tuple[str, ...], columns: list[Any]) -> Any:
    args: list[Any] = []
    for name, kind, column in zip(names, kinds, columns, strict=True):
        args += [literal(name, String()), _as_recorded(kind, column)]
    return func.jsonb_build_object(*args)


def _as_recorded(kind: str, column: Any) -> Any:
    """`column` as the record holds it (see `_snapshot_kinds`); NULL stays NULL."""
    if kind == "text":
        return cast(column, Text)
    if kind == "cut":
        # `clean_text`: past MAX_TEXT characters, the text's start and a marker of its length.
        size = func.char_length(column)
        marker = literal("…[TRUNCATED: ").op("||")(cast(size, Text)).op("||")(literal(" characters]"))
        start = func.left(column, literal(MAX_TEXT) - func.char_length(marker))
        return case((size > MAX_TEXT, start.op("||")(marker)), else_=column)
    if kind == "date":
        return _finite(column, func.to_char(column, literal("YYYY-MM-DD")), "0001-01-01", "9999-12-31")
    if kind == "datetime":
        # `datetime.isoformat()`: the microseconds only when there are some.
        micro = cast(func.date_part(literal("microseconds"), column), BigInteger) % 1_000_000
        fraction = case((micro != 0, func.to_char(column, literal(".US"))), else_=literal(""))
        text = func.to_char(column, literal('YYYY-MM-DD"T"HH24:MI:SS')).op("||")(fraction)
        return _finite(column, text, "0001-01-01T00:00:00", "9999-12-31T23:59:59.999999")
    return column


def _finite(column: Any, text: Any, lowest: str, highest: str) -> Any:
    # asyncpg reads -infinity and infinity as the smallest and largest value Python has (and
    # stores those as them); to_char gives NULL for both.
    middle = cast(literal("2000-01-01"), Date())
    return case(
        (func.isfinite(column), text),
        (column > middle, literal(highest)),
        (column < middle, literal(lowest)),
        else_=null(),
    )


# --- transactions -------------------------------------------------------------------------


async def _quiet_rollback(rollback: Callable[[], Awaitable[None]]) -> None:
    try:
        await rollback()
    except Exception:  # the connection may be gone; the server rolled back already
        log.warning("ormai_agents: rollback after a failed write failed", exc_info=True)


async def _first_attempt(call: Call, attempt: Callable[[bool], Awaitable[WriteResult]]) -> WriteResult:
    """The first attempt of a write in its own transaction, which may store its record in its
    own statement; when that statement fails it is rolled back, and the write run again without."""
    call.may_fold = True
    try:
        return await attempt(False)
    except FoldFailedError as failed:
        why = failed.__cause__
        log.debug("ormai_agents: a %s with its audit record in it failed (%r); run again without", call.tool, why)
        call.may_fold = False
        return await attempt(True)


async def _in_transaction(call: Call, body: Callable[[], Awaitable[WriteResult]]) -> WriteResult:
    """Run `body` and store the audit record atomically: commit, or release a savepoint."""
    db = call.db
    if not call.owns_transaction():
        # The host's transaction: a savepoint, no retry (rolling back would discard the host's
        # work), and the commit is the host's.
        savepoint = await db.begin_nested()
        try:
            done = await body()
            await call.audit_now()
        except BaseException:
            await _quiet_rollback(savepoint.rollback)
            raise
        await savepoint.commit()
        return done

    async def attempt(again: bool) -> WriteResult:
        call.before = call.after = None
        call.audit_folded = False
        try:
            if call.runtime.rls_paths is not None and (again or not db.in_transaction()):
                await call.set_rls()  # a rollback discarded them
            done = await body()
            await call.audit_now()
        except BaseException:
            await _quiet_rollback(db.rollback)
            raise
        return done

    # The first attempt runs outside tenacity: setting up its loop cost about a tenth of a
    # write's own CPU time, for retries that almost never happen. The waits are tenacity's.
    result: WriteResult | None = None
    try:
        result = await _first_attempt(call, attempt)
    except TransientDatabaseError:
        await asyncio.sleep(_FIRST_WAIT)
    if result is None:
        async for retry in retrying(_WRITE_ATTEMPTS - 1, multiplier=2 * _FIRST_WAIT):
            with retry:
                result = await attempt(True)
    assert result is not None
    try:
        # Never retried: the server may have applied the commit before the failure.
        await db.commit()
    except Exception as exc:
        log.error("ormai_agents: commit of a %s failed; its outcome is unknown", call.tool, exc_info=exc)
        await _quiet_rollback(db.rollback)
        raise WriteOutcomeUnknownError(
            "The connection failed while the change was being saved, so it may or may not have been "
            "written. Check with get or query before repeating it."
        ) from None
    return result


__all__ = ["OPERATIONS", "execute_approved", "perform", "precheck", "target_exists"]
