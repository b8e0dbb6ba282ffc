"""The write path: create, update, delete and bulk_update under a model's `WritePolicy`.

Each call is validated in full before any statement runs (unknown, denied, masked, hashed,
server-set and immutable fields are refused), then runs in one transaction:

- update, delete and bulk_update change rows with ONE statement whose WHERE clause carries the
  primary key (or the agent's filters), the scoping and the restrict policies. A snapshot read
  before it (locked with FOR UPDATE where the database supports it) only feeds the audit record;
  whether a row is changed is decided by the write statement's own WHERE clause.
- creates and updates re-select the written row by primary key under the same clauses in the same
  transaction (PostgreSQL's WITH CHECK): a row that left the principal's scope is rolled back.
- the audit record is stored before the commit; when it can't be stored the write is rolled back.

Transactions: when the handle has no transaction open, the call begins one and commits it; when a
transaction is open (the host began one, or SQLAlchemy auto-began one for an earlier statement),
the call runs in a SAVEPOINT and the commit stays with the host. Transient failures are retried
only in the first case and only before COMMIT: a write whose commit may have reached the server
is never sent again.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, and_, delete, insert, true, tuple_, update
from sqlalchemy import select as sql_select
from sqlalchemy import types as sqltypes
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from ormai_agents import _inputs, _types
from ormai_agents._budget import Interruptible
from ormai_agents._conditions import columns_used
from ormai_agents._context import Principal
from ormai_agents._dberrors import map_db_errors, retrying
from ormai_agents._dialects import capabilities, exact_equals
from ormai_agents._errors import (
    AccessDeniedError,
    ApprovalError,
    ApprovalRequiredError,
    FieldNotAllowedError,
    PolicyError,
    RecordNotFoundError,
    TransientDatabaseError,
    ValidationError,
    WriteNotAllowedError,
    WriteOutcomeUnknownError,
)
from ormai_agents._operations import OPERATIONS as TABLE
from ormai_agents._operations import WRITE_OPERATIONS
from ormai_agents._paths import parse_principal_path
from ormai_agents._plan import _DENIED_MESSAGE, ModelPlan, Where
from ormai_agents._results import WriteResult
from ormai_agents.policy import FieldAction, WriteAction

if TYPE_CHECKING:
    from ormai_agents.approvals import Approval
    from ormai_agents.toolset import Toolset, _Call

log = logging.getLogger("ormai_agents")

OPERATIONS = WRITE_OPERATIONS
_ARGUMENTS = {op: TABLE[op].arguments for op in OPERATIONS}
_WRITE_ATTEMPTS = 3
_NOW = "now()"
_CHECK_FAILED = (
    "The change was rolled back: the {model} record would no longer be one you may access "
    "(outside your scope or a row policy). Nothing was written."
)


@dataclass(slots=True)
class _AutoSet:
    column: Any
    path: tuple[str, ...] | None  # principal.<path>
    now: bool
    literal: Any


@dataclass(slots=True)
class Reference:
    """A foreign key the agent may set: checked as one tuple against rows the principal may see."""

    names: list[str]  # this model's fields, in the constraint's order
    target: ModelPlan  # the referenced model: exposed, or listed with allowed=False
    remote: list[Any]  # the referenced columns, in the same order
    exposed: bool  # False: a model the agent can't see, whose name no message may carry


@dataclass(slots=True)
class WritePlan:
    """What the write path needs of one model, compiled when the toolset is built."""

    plan: ModelPlan
    table: Table | None
    auto_create: dict[str, _AutoSet]
    auto_update: dict[str, _AutoSet]
    # Fields the agent may send, per operation ("update" also serves bulk_update).
    writable_create: list[str]
    writable_update: list[str]
    # Why a readable field is not writable, per operation (the agent may see these names).
    refused_create: dict[str, str]
    refused_update: dict[str, str]
    required: list[str]  # declared required (WritePolicy.required_fields)
    # Fields a create must carry: declared required, or NOT NULL without a default, a server
    # value or a database-generated key. The create tool's schema and the check agree by reading it.
    required_create: list[str]
    # The write operations that exist for this model, with the policy's action: allowed by the
    # policy, by key only with a plainly readable key, changing fields only when one is writable.
    # The tool builder builds exactly these tools, and describe_schema reports exactly these.
    operations: dict[str, WriteAction]
    # Foreign keys the agent may set (see `_references`), and the local columns whose current
    # values an update needs to check them as whole tuples.
    references: list[Reference] = field(default_factory=list)
    reference_columns: list[str] = field(default_factory=list)

    def writable(self, op: str) -> list[str]:
        return self.writable_create if op == "create" else self.writable_update


def refusals(plan: ModelPlan, op: str) -> dict[str, str]:
    """Readable fields the agent may not send for `op`, with the reason (the agent may see these names)."""
    wp = plan.policy.write_policy
    server_set = set(wp.auto_set) | set(wp.auto_set_on_update) | {s[0] for s in plan.scoping}
    table = plan.selectable if isinstance(plan.selectable, Table) else None
    generated = table.autoincrement_column if table is not None else None
    out: dict[str, str] = {}
    for fname, info in plan.fields.items():
        if info.action is not FieldAction.Allow:
            out[fname] = f"{fname!r} is {info.action.value}ed and can't be written"
        elif fname in server_set:
            out[fname] = f"{fname!r} is set by the server and can't be sent"
        elif op == "create":
            if generated is not None and info.column is generated:
                out[fname] = f"{fname!r} is generated by the database and can't be sent"
        elif info.primary_key:
            out[fname] = f"{fname!r} is the record's key and can't be changed"
        elif fname in wp.immutable_fields:
            out[fname] = f"{fname!r} can't be changed once the record exists"
    return out


def writable_fields(plan: ModelPlan, op: str) -> list[str]:
    """The fields the agent may send in `data` for `op` (create, update or bulk_update)."""
    refused = refusals(plan, op)
    return [n for n in plan.fields if n not in refused]


def build_write_plans(
    plans: Mapping[str, ModelPlan], hidden: Mapping[str, ModelPlan] | None = None
) -> dict[str, WritePlan]:
    """Check every model's WritePolicy against its mapping; raise PolicyError when it can't work.

    `hidden` holds the plans of the models the policy lists with `allowed=False`: they scope
    references into tables the agent can't see."""
    out: dict[str, WritePlan] = {}
    for name, plan in plans.items():
        wp = plan.policy.write_policy
        enabled = {op: getattr(wp, op) for op in OPERATIONS if getattr(wp, op) is not WriteAction.Deny}
        table = plan.selectable if isinstance(plan.selectable, Table) else None
        if enabled and table is None:
            raise PolicyError(f"{name}: writes are supported only on models mapped to a single table")
        if "create" in enabled:
            missing = [s[0] for s in plan.scoping if s[0] not in wp.auto_set]
            if missing:
                raise PolicyError(
                    f"{name}: create is enabled, so every scoping column must be set by the server; add "
                    + ", ".join(f'auto_set["{m}"]' for m in missing)
                    + " (for example \"principal.tenant_id\")"
                )
        refused_create, refused_update = refusals(plan, "create"), refusals(plan, "update")
        writable_create = [n for n in plan.fields if n not in refused_create]
        for fname in wp.required_fields:
            # An agent told "x is required" would learn of a field it must not see, or be asked
            # for a value it can never send.
            if fname not in plan.fields:
                raise PolicyError(f"{name}: required_fields names {fname!r}, which the policy denies")
            if "create" in enabled and fname not in writable_create and fname not in wp.auto_set:
                raise PolicyError(
                    f"{name}: required_fields names {fname!r}, which the agent can't send on create "
                    f"({refused_create[fname]}); remove it or auto_set it"
                )
        writable_update = [n for n in plan.fields if n not in refused_update]
        writable = {"create": writable_create, "update": writable_update, "bulk_update": writable_update}
        out[name] = WritePlan(
            plan=plan,
            table=table,
            auto_create={k: _auto(plan, k, v) for k, v in wp.auto_set.items()},
            auto_update={k: _auto(plan, k, v) for k, v in wp.auto_set_on_update.items()},
            writable_create=writable_create,
            writable_update=writable_update,
            refused_create=refused_create,
            refused_update=refused_update,
            required=list(wp.required_fields),
            required_create=_required_on_create(plan, table, writable_create),
            operations={
                op: action
                for op, action in enabled.items()
                if not (TABLE[op].by_key and not plan.keyed)
                and not (TABLE[op].needs_fields and not writable.get(op))
                and not (op == "create" and _unfillable(plan, table, writable_create))
            },
        )
    exposed = {p.mapper.local_table: p for p in plans.values()}
    listed = {p.mapper.local_table: p for p in (hidden or {}).values()}
    for wplan in out.values():
        wplan.references = _references(wplan, exposed, listed)
        wplan.reference_columns = list(dict.fromkeys(n for ref in wplan.references for n in ref.names))
        _refuse_write_oracles(wplan)
    return out


def _references(wplan: WritePlan, exposed: Mapping[Any, ModelPlan], listed: Mapping[Any, ModelPlan]) -> list[Reference]:
    """The foreign keys of `wplan`'s table that the agent may set, each checked when it is set.

    Refused (PolicyError) when the referenced table belongs to no model of the policy (nothing
    says how to scope it), or when it belongs to an exposed model that can't read the referenced
    columns plainly (success would confirm guesses of values the agent can't read). A model listed
    with `allowed=False` scopes the check with its own scoping and restrict policies.
    """
    plan, table = wplan.plan, wplan.table
    ops = wplan.operations
    agent_set = set(wplan.writable_create if "create" in ops else ()) | set(
        wplan.writable_update if "update" in ops or "bulk_update" in ops else ()
    )
    if table is None or not agent_set:
        return []
    attr_of = {c: k for k, c in plan.columns.items()}
    out: list[Reference] = []
    for fk in sorted(table.foreign_key_constraints, key=lambda c: [e.parent.name for e in c.elements]):
        names = [attr_of.get(e.parent) for e in fk.elements]
        sent = [n for n in names if n in agent_set]
        if not sent:
            continue
        target = exposed.get(fk.referred_table)
        shown = target is not None
        target = target or listed.get(fk.referred_table)
        what = f"{plan.name}: {', '.join(sent)} refers to table {fk.referred_table.name!r}"
        if target is None or None in names:
            raise PolicyError(
                f"{what}, which no model of the policy describes, so the toolset can't tell which of its rows "
                "the principal may reach. List that table's model in the policy (allowed=False with its "
                f"scoping, to check references without exposing it), or make {', '.join(sent)} not writable."
            )
        remote_attr = {c: k for k, c in target.columns.items()}
        remote = [e.column for e in fk.elements]
        if shown and not all(
            remote_attr.get(c) in target.fields and target.fields[remote_attr[c]].plain for c in remote
        ):
            raise PolicyError(
                f"{what} through fields of {target.name} the agent can't read plainly: a write's success "
                f"would confirm guesses of their values. Allow them on {target.name}, or make "
                f"{', '.join(sent)} not writable."
            )
        out.append(Reference([n for n in names if n is not None], target, remote, shown))
    return out


def _refuse_write_oracles(wplan: WritePlan) -> None:
    """A restrict row policy relating a field the agent writes to one it can't read turns the
    write's check into an oracle (`spend <= credit_limit`, credit_limit masked: the outcome of
    a few writes gives the hidden value away). Refused unless the policy accepts it."""
    plan = wplan.plan
    ops = wplan.operations
    written = set(wplan.writable_create if "create" in ops else ()) | set(
        wplan.writable_update if "update" in ops or "bulk_update" in ops else ()
    )
    if not written:
        return
    for rp in plan.restricts:
        if rp.policy.accept_write_oracle:
            continue
        used = columns_used(rp.condition.tree)
        hidden = sorted(c for c in used if c not in plan.fields or not plan.fields[c].plain)
        sent = sorted(used & written)
        if hidden and sent:
            raise PolicyError(
                f"{plan.name}: row policy {rp.policy.name!r} relates {', '.join(sent)}, which the agent writes, "
                f"to {', '.join(hidden)}, which it can't read: the check of every write would tell it where the "
                "hidden value lies. Make those fields readable or the written ones not writable, or set "
                "accept_write_oracle=True on the row policy."
            )


def _unfillable(plan: ModelPlan, table: Table | None, writable: list[str]) -> list[str]:
    """NOT NULL columns a create can't fill: no default, not generated, not set by the server,
    and not writable by the agent (denied, masked, hashed). With one, no create can succeed, so
    no create tool is offered."""
    if table is None:
        return []
    wp = plan.policy.write_policy
    out = [
        name
        for name, column in plan.columns.items()
        if column.table is table
        and not column.nullable
        and column.default is None
        and column.server_default is None
        and column is not table.autoincrement_column
        and name not in writable
        and name not in wp.auto_set
    ]
    if out:
        log.warning("ormai_agents: %s can't be created by an agent: a required column can't be written; no create tool", plan.name)
    return out


def _required_on_create(plan: ModelPlan, table: Table | None, writable: list[str]) -> list[str]:
    wp = plan.policy.write_policy
    generated = table.autoincrement_column if table is not None else None
    out = [n for n in writable if n in wp.required_fields]
    for name in writable:
        column = plan.fields[name].column
        if (
            name not in out
            and not column.nullable
            and column.default is None
            and column.server_default is None
            and column is not generated
        ):
            out.append(name)
    return out


def _auto(plan: ModelPlan, name: str, source: Any) -> _AutoSet:
    column = plan.columns[name]
    if isinstance(source, str) and source.startswith("principal"):
        return _AutoSet(column, parse_principal_path(source), False, None)
    if source == _NOW:
        if _types.python_type(column.type) is not dt.datetime:
            raise PolicyError(f"{plan.name}: auto_set {name!r} is now(), but {name} is not a date-time column")
        return _AutoSet(column, None, True, None)
    if source is not None:
        try:
            source = _types.make_coercer(_types.python_type(column.type))(source)
        except ValueError as exc:
            raise PolicyError(f"{plan.name}: auto_set {name!r}: {exc}") from None
    return _AutoSet(column, None, False, source)


# --- validation ---------------------------------------------------------------------------


@dataclass(slots=True)
class Change:
    """A validated write: what to change, and where."""

    op: str
    key: list[Any] | None = None
    values: dict[str, Any] = field(default_factory=dict)  # field name -> coerced value (agent's)
    filters: list[Any] = field(default_factory=list)


def parse_change(wplan: WritePlan, op: str, args: Mapping[str, Any]) -> Change:
    """Validate the agent's arguments for `op`. Nothing touches the database."""
    plan = wplan.plan
    change = Change(op)
    if op in ("update", "delete"):
        if any(info is None or not info.plain for info in plan.pk):
            raise ValidationError(f"{op} by id is not available on {plan.name}")
        change.key = _inputs.parse_id(plan, args.get("id"))
    if op == "bulk_update":
        filters = args.get("filters")
        if not filters:
            raise ValidationError(
                'bulk_update needs at least one filter ({"field": ..., "op": ..., "value": ...}) naming the records to change'
            )
        change.filters, _ = _inputs.parse_filters(plan, filters)
    if op != "delete":
        change.values = _parse_data(wplan, op, args.get("data"))
    return change


def _parse_data(wplan: WritePlan, op: str, data: Any) -> dict[str, Any]:
    plan = wplan.plan
    writable = wplan.writable(op)
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise ValidationError(f"data must be an object of field names and values. Fields you can write: {_names(writable)}")
    if op != "create" and not data:
        raise ValidationError(f"data must name at least one field to change. Fields you can write: {_names(writable)}")
    refused = wplan.refused_create if op == "create" else wplan.refused_update
    out: dict[str, Any] = {}
    for name, value in data.items():
        if name not in writable:
            reason = refused.get(name)
            # An unknown or denied name is never echoed: it may be a field the agent must not learn of.
            what = reason if reason is not None else f"data names a field that is not available on {plan.name}"
            raise FieldNotAllowedError(
                f"{what}. Nothing was written. Fields you can write on {plan.name}: {_names(writable)}",
                details={"allowed_fields": writable},
            )
        out[name] = _value(plan.fields[name], value, name in wplan.required)
    if op == "create":
        for name in wplan.required_create:
            if name not in out:
                raise ValidationError(f"{name!r} is required to create a {plan.name}. Nothing was written.")
    return out


def _value(info: Any, value: Any, required: bool) -> Any:
    column = info.column
    if value is None:
        if required or not column.nullable:
            raise ValidationError(f"{info.name!r} can't be null. Nothing was written.")
        return None
    try:
        out = info.coerce(value)
    except ValueError as exc:
        raise ValidationError(f"data.{info.name}: {exc}. Nothing was written.") from None
    length = getattr(column.type, "length", None)
    if isinstance(out, str) and isinstance(length, int) and len(out) > length:
        raise ValidationError(f"data.{info.name}: at most {length} characters. Nothing was written.")
    return _fit_datetime(column, out)


def _fit_datetime(column: Any, value: Any) -> Any:
    # Naive timestamp columns get naive UTC values; drivers refuse or shift aware ones.
    if isinstance(value, dt.datetime) and isinstance(column.type, sqltypes.DateTime):
        if column.type.timezone and value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        if not column.type.timezone and value.tzinfo is not None:
            return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def _auto_values(auto: Mapping[str, _AutoSet], principal: Principal) -> dict[str, Any]:
    """Server-set values for this principal, at this moment."""
    out: dict[str, Any] = {}
    now = dt.datetime.now(dt.timezone.utc)
    for name, spec in auto.items():
        if spec.now:
            out[name] = _fit_datetime(spec.column, now)
        elif spec.path is not None:
            value = principal.resolve(spec.path)
            if value is None or value == "" or isinstance(value, (tuple, list, Mapping, bool)):
                raise AccessDeniedError(_DENIED_MESSAGE)
            try:
                out[name] = _types.coercer_for(spec.column.type)(value)
            except ValueError:
                raise AccessDeniedError(_DENIED_MESSAGE) from None
        else:
            out[name] = spec.literal
    return out


def _names(names: list[str]) -> str:
    return ", ".join(names) if names else "(none)"


# --- the call -----------------------------------------------------------------------------


def write_action(plan: ModelPlan, op: str) -> WriteAction:
    """The policy's action for `op` on the model; WriteNotAllowedError when it is Deny."""
    action: WriteAction = getattr(plan.policy.write_policy, op)
    if action is WriteAction.Deny:
        allowed = [o for o in OPERATIONS if getattr(plan.policy.write_policy, o) is not WriteAction.Deny]
        raise WriteNotAllowedError(
            f"{op} is not allowed on {plan.name}. "
            + (f"Writes you may request on {plan.name}: {', '.join(allowed)}" if allowed else f"{plan.name} is read-only.")
        )
    return action


def precheck(toolset: Toolset, model: Any, op: str, args: Mapping[str, Any]) -> None:
    """Everything `perform` checks before touching the database, without a database."""
    plan = toolset.plan(model)
    write_action(plan, op)
    parse_change(toolset._write_plans[plan.name], op, normalize_arguments(op, args))


async def perform(toolset: Toolset, call: _Call, args: dict[str, Any], approval: Approval | None = None) -> WriteResult:
    """Run one write tool call (`call.tool` is the operation) under the current policy."""
    op = call.tool
    plan = call.plan = toolset.plan(call.model)
    action = write_action(plan, op)
    principal = call.ctx.principal
    where = call.where = plan.where(principal)
    wplan = toolset._write_plans[plan.name]
    needs_approval = action is WriteAction.RequireApproval and approval is None
    if needs_approval:
        args = normalize_arguments(op, args)  # the JSON form is what is stored, approved and run
    change = parse_change(wplan, op, args)
    if needs_approval:
        # Nobody is asked to approve a write that can't happen: the record it names must be one
        # the principal may change (a bulk update matching nothing changes nothing, unapproved).
        db = call.ctx.db
        fresh = call.opened if call.opened is not None else not db.in_transaction()
        exists = await _target_exists(wplan, where, change, db, call.deadline)
        if fresh:  # the check's read began the transaction: end it, the host's session stays as it was
            await _aw(db.rollback())
        if not exists:
            if op != "bulk_update":
                raise _not_found(plan)
            call.row_count = 0
            return WriteResult({"updated_count": 0})
        approval_id = await toolset._approvals.submit(principal, op, plan.name, args)
        raise ApprovalRequiredError(
            f"This {op} on {plan.name} needs a person's approval before it runs, so nothing was written yet. "
            f"It was submitted for approval with id {approval_id}.",
            approval_id=approval_id,
        )
    if approval is not None and not await toolset._approvals.claim(approval):
        raise ApprovalError("That approval has already been used or is no longer approved. Nothing was written.")
    try:
        result = await _in_transaction(call, lambda db: _apply(toolset, call, wplan, where, change, db))
    except BaseException as exc:
        if approval is not None:
            await toolset._approvals.finish(approval, exc)
        raise
    if approval is not None:
        await toolset._approvals.finish(approval, None)
    return result


def _not_found(plan: ModelPlan) -> RecordNotFoundError:
    return RecordNotFoundError(
        f"No {plan.name} with that id is visible to you, or you may only read it. Use query to find "
        "the records you can see."
    )


async def _target_exists(wplan: WritePlan, where: Where, change: Change, db: Any, deadline: float | None) -> bool:
    """Whether the record an update or delete names (a record a bulk update's filters match) is
    one the principal may change; True for a create."""
    if change.op == "create":
        return True
    plan = wplan.plan
    assert wplan.table is not None
    match = [c == v for c, v in zip(plan.pk_columns, change.key)] if change.key is not None else change.filters
    stmt = sql_select(*plan.pk_columns).select_from(wplan.table).where(*match, *where.write_clauses).limit(1)
    return bool((await _run(db, stmt, deadline)).all())


async def target_exists(toolset: Toolset, ctx: Any, model: Any, op: str, args: Mapping[str, Any]) -> bool:
    """`_target_exists` for a write's arguments (see `Toolset.write_target_exists`)."""
    plan = toolset.plan(model)
    write_action(plan, op)
    change = parse_change(toolset._write_plans[plan.name], op, normalize_arguments(op, args))
    fresh = not ctx.db.in_transaction()
    try:
        return await _target_exists(toolset._write_plans[plan.name], plan.where(ctx.principal), change, ctx.db, None)
    finally:
        if fresh:  # a read of ours began the transaction: leave the session as it was
            await _quiet_rollback(ctx.db)


async def _apply(toolset: Toolset, call: _Call, wplan: WritePlan, where: Where, change: Change, db: Any) -> WriteResult:
    plan = wplan.plan
    table = wplan.table
    assert table is not None
    principal = call.ctx.principal
    names = list(plan.fields)
    width = len(names)
    shape = toolset._shaper(plan, names)
    columns = [plan.fields[n].column.label(n) for n in names]
    # Where the database has RETURNING, the WITH CHECK is part of the write statement: RETURNING
    # evaluates the policy clauses on the written row. Otherwise the row is re-selected by key in
    # the same transaction.
    caps = capabilities(await _dialect(db))
    check = and_(*where.write_clauses).label("_check") if where.write_clauses else true().label("_check")
    not_found = _not_found(plan)
    check_failed = WriteNotAllowedError(_CHECK_FAILED.format(model=plan.name))

    def run(stmt: Any) -> Awaitable[Any]:
        return _run(db, stmt, call.deadline)

    def by_key(key: Any) -> list[Any]:
        return [c == v for c, v in zip(plan.pk_columns, key)]

    def snapshot(*conditions: Any, lock: bool = False) -> Any:
        stmt = sql_select(*columns, check).select_from(table).where(*conditions, *where.write_clauses)
        return stmt.with_for_update() if lock else stmt

    auto = {"create": wplan.auto_create, "delete": {}}.get(change.op, wplan.auto_update)
    server = _auto_values(auto, principal)
    values = {plan.columns[k]: v for k, v in {**change.values, **server}.items()}
    refs = wplan.reference_columns
    # The current values of the foreign-key columns, to check composite keys as whole tuples.
    ref_columns = [plan.columns[n].label(f"_ref_{i}") for i, n in enumerate(refs)]

    def current(row: Any, start: int) -> dict[str, Any]:
        return dict(zip(refs, row[start : start + len(refs)]))

    if change.op == "create":
        await _check_references(wplan, change.values, server, [{}], principal, run)
        stmt = insert(table).values(values)
        if caps.insert_returning:
            rows = (await run(stmt.returning(*columns, check))).all()
        else:
            key = list((await run(stmt)).inserted_primary_key or ())
            rows = (await run(snapshot(*by_key(key)))).all() if key and None not in key else []
        if not rows or not rows[0][width]:
            raise check_failed
        call.after = shape(rows[0])
        call.row_count = 1
        return WriteResult(dict(call.after))

    if change.op == "delete":
        match = by_key(change.key)
        stmt = delete(table).where(*match, *where.write_clauses)
        if caps.delete_returning:
            rows = (await run(stmt.returning(*columns))).all()
        else:
            rows = (await run(snapshot(*match, lock=True))).all()
            if rows and (await run(stmt)).rowcount != 1:
                rows = []
        if not rows:
            raise not_found
        call.before = shape(rows[0])
        call.row_count = 1
        return WriteResult(dict(call.before))

    if change.op == "update":
        match = by_key(change.key)
        # The before snapshot is for the audit record only; the UPDATE decides by its own WHERE.
        before = (await run(snapshot(*match, lock=True).add_columns(*ref_columns))).all()
        if not before:
            raise not_found
        call.before = shape(before[0])
        await _check_references(wplan, change.values, server, [current(before[0], width + 1)], principal, run)
        stmt = update(table).where(*match, *where.write_clauses).values(values)
        if caps.update_returning:
            after = (await run(stmt.returning(*columns, check))).all()
        else:
            if (await run(stmt)).rowcount != 1:
                raise not_found
            # Updated but no longer visible under the policy: the check fails.
            after = (await run(snapshot(*match))).all() or [(*before[0][:width], False)]
        if not after:
            raise not_found
        if not after[0][width]:
            raise check_failed
        call.after = shape(after[0])
        call.row_count = 1
        return WriteResult(dict(call.after))

    # bulk_update: lock and count the matching rows first, so an over-limit call writes nothing.
    limit = plan.policy.write_policy.max_affected_rows
    pk_labels = [c.label(f"_pk{i}") for i, c in enumerate(plan.pk_columns)]
    stmt = (
        sql_select(*columns, check, *pk_labels, *ref_columns)
        .select_from(table)
        .where(*where.write_clauses, *change.filters)
        .order_by(*plan.pk_columns)
        .limit(limit + 1)
        .with_for_update()
    )
    before = (await run(stmt)).all()
    if len(before) > limit:
        raise ValidationError(
            f"This bulk_update would change more than {limit} {plan.name} records, the most one call may "
            "change. Nothing was written. Narrow the filters, or update records one at a time."
        )
    call.before = {"rows": [shape(r) for r in before]}
    if not before:
        call.row_count = 0
        call.after = {"updated_count": 0}
        return WriteResult({"updated_count": 0})
    npk = len(pk_labels)
    keys = [tuple(r[width + 1 : width + 1 + npk]) for r in before]
    in_keys = (
        plan.pk_columns[0].in_([k[0] for k in keys])
        if len(plan.pk_columns) == 1
        else tuple_(*plan.pk_columns).in_(keys)
    )
    await _check_references(
        wplan, change.values, server, [current(r, width + 1 + npk) for r in before], principal, run
    )
    stmt = update(table).where(in_keys, *where.write_clauses, *change.filters).values(values)
    if caps.update_returning:
        after = (await run(stmt.returning(*columns, check))).all()
        count = len(after)
    else:
        count = (await run(stmt)).rowcount
        after = (await run(snapshot(in_keys))).all()
        if len(after) < count:
            after = []  # some updated rows are no longer visible
    if count != len(keys):
        # Rows changed between the count and the write (only where FOR UPDATE is not supported).
        raise TransientDatabaseError("The records changed while they were being updated. Nothing was written; try again.")
    if len(after) != count or not all(r[width] for r in after):
        raise WriteNotAllowedError(_CHECK_FAILED.format(model=plan.name).replace("record would", "records would"))
    call.after = {"updated_count": count, "rows": [shape(r) for r in after]}
    call.row_count = count
    return WriteResult({"updated_count": count})


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
                .where(*(exact_equals(c, v) for c, v in zip(ref.remote, key)), *twhere.write_clauses)
                .limit(1)
                .with_for_update(read=True)
            )
            if not (await run(stmt)).all():
                where = f"no {ref.target.name} with that id" if ref.exposed else "no record with that id"
                hint = f" Use query on {ref.target.name} to find one." if ref.exposed else ""
                raise ValidationError(f"data.{named[0]}: {where} is visible to you. Nothing was written.{hint}")


# --- transactions -------------------------------------------------------------------------


async def _aw(value: Any) -> Any:
    """Await `value` when the handle is async; sync handles return plain values."""
    if inspect.isawaitable(value):
        return await value
    return value


async def _dialect(db: Any) -> Any:
    if isinstance(db, AsyncSession):
        return (await db.connection()).dialect
    if isinstance(db, Session):
        return db.connection().dialect
    return db.dialect


async def _run(db: Any, stmt: Any, deadline: float | None) -> Any:
    with map_db_errors("write"):
        if isinstance(db, AsyncSession):
            aconn = await db.connection()
            with Interruptible(aconn.sync_connection, deadline):
                return await aconn.execute(stmt)
        if isinstance(db, Session):
            conn = db.connection()
            with Interruptible(conn, deadline):
                return conn.execute(stmt)
        with Interruptible(getattr(db, "sync_connection", db), deadline):
            return await _aw(db.execute(stmt))


async def _quiet_rollback(tx: Any) -> None:
    try:
        await _aw(tx.rollback())
    except Exception:  # the connection may be gone; the server rolled back already
        log.warning("ormai_agents: rollback after a failed write failed", exc_info=True)


async def _in_transaction(call: _Call, body: Callable[[Any], Awaitable[WriteResult]]) -> WriteResult:
    """Run `body` and store the audit record atomically: commit, or release a savepoint."""
    db = call.ctx.db
    # With row-level security the call's settings may already have begun the transaction; it is
    # still the call's own (`call.opened`).
    owned = call.opened if call.opened is not None else not db.in_transaction()
    if not owned:
        # The host's transaction: a savepoint, no retry (rolling back would discard the host's
        # work), and the commit is the host's.
        tx = await _aw(db.begin_nested())
        try:
            result = await body(db)
            await call.audit_now()
        except BaseException:
            await _quiet_rollback(tx)
            raise
        with map_db_errors("release the savepoint"):
            await _aw(tx.commit())
        return result

    toolset = call.toolset
    result = None
    first = True
    async for attempt in retrying(_WRITE_ATTEMPTS):
        with attempt:
            call.before = call.after = None
            try:
                if not first and toolset._rls_paths is not None:
                    await toolset._set_rls(call.ctx)  # the rollback discarded them
                first = False
                result = await body(db)
                await call.audit_now()
            except BaseException:
                await _quiet_rollback(db)
                raise
    assert result is not None
    try:
        # Never retried: the server may have applied the commit before the failure.
        await _aw(db.commit())
    except Exception as exc:
        log.error("ormai_agents: commit of a %s failed; its outcome is unknown", call.tool, exc_info=exc)
        await _quiet_rollback(db)
        raise WriteOutcomeUnknownError(
            "The connection failed while the change was being saved, so it may or may not have been "
            "written. Check with get or query before repeating it."
        ) from None
    return result


def normalize_arguments(op: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of `op` as plain JSON values (what an approval binds and what then runs)."""
    if op not in _ARGUMENTS:
        raise ValidationError(f"Unknown write operation; use one of: {', '.join(OPERATIONS)}")
    unknown = set(args) - set(_ARGUMENTS[op])
    if unknown:
        raise ValidationError(f"{op} takes only: {', '.join(_ARGUMENTS[op])}")
    try:
        out: dict[str, Any] = json.loads(_inputs.canonical({k: args.get(k) for k in _ARGUMENTS[op]}))
    except (TypeError, ValueError):
        raise ValidationError(f"The arguments of {op} must be plain JSON values.") from None
    return out


async def execute_approved(toolset: Toolset, call: _Call, approval_id: Any) -> WriteResult:
    """Run the write an approval names, exactly as it was submitted, under the current policy."""
    approval = await toolset._approvals.load(approval_id, call.ctx.principal)
    call.tool = approval.tool
    call.model = approval.model
    call.inputs = {**approval.arguments, "approval_id": approval.id}
    return await perform(toolset, call, dict(approval.arguments), approval=approval)


__all__ = [
    "OPERATIONS",
    "WritePlan",
    "build_write_plans",
    "execute_approved",
    "normalize_arguments",
    "parse_change",
    "perform",
    "precheck",
    "refusals",
    "target_exists",
    "writable_fields",
    "write_action",
]
