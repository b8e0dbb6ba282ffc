"""The write plan: what the write path needs of each model, compiled when the toolset is built,
and the validation of a write's arguments (nothing here touches the database).

`build_write_plans` checks every model's `WritePolicy` against its mapping and the rest of the
policy (`PolicyError` when it can't work, or would let a write reach what the principal can't
see): the fields the agent may send per operation and why the others are refused, the fields a
create must carry, the write tools that exist, the foreign keys the agent may set (and how each is
checked), and restrict policies that would turn a write's check into an oracle. `parse_change`
then validates one call's arguments against the plan.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table
from sqlalchemy import types as sqltypes

from ormai_agents import _inputs, _types
from ormai_agents._conditions import columns_used
from ormai_agents._context import Principal
from ormai_agents._errors import (
    AccessDeniedError,
    FieldNotAllowedError,
    PolicyError,
    ValidationError,
    WriteNotAllowedError,
)
from ormai_agents._operations import OPERATIONS as TABLE
from ormai_agents._operations import WRITE_OPERATIONS
from ormai_agents._paths import parse_principal_path
from ormai_agents._plan import DENIED_MESSAGE, ModelPlan
from ormai_agents.policy import FieldAction, WriteAction

log = logging.getLogger("ormai_agents")

OPERATIONS = WRITE_OPERATIONS
_ARGUMENTS = {op: TABLE[op].arguments for op in OPERATIONS}
_NOW = "now()"


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

    def sent_fields(self) -> set[str]:
        """Every field the agent may set through the write tools that exist."""
        ops = self.operations
        return set(self.writable_create if "create" in ops else ()) | set(
            self.writable_update if "update" in ops or "bulk_update" in ops else ()
        )


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
    agent_set = wplan.sent_fields()
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
    written = wplan.sent_fields()
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
        log.warning(
            "ormai_agents: %s can't be created by an agent: a required column can't be written; no create tool",
            plan.name,
        )
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
    if TABLE[op].by_key:
        if not plan.keyed:
            raise ValidationError(f"{op} by id is not available on {plan.name}")
        change.key = _inputs.parse_id(plan, args.get("id"))
    if op == "bulk_update":
        filters = args.get("filters")
        if not filters:
            raise ValidationError(
                'bulk_update needs at least one filter ({"field": ..., "op": ..., "value": ...}) naming the records '
                "to change"
            )
        change.filters, _ = _inputs.parse_filters(plan, filters)
    if op != "delete":
        change.values = _parse_data(wplan, op, args.get("data"))
    return change


def _parse_data(wplan: WritePlan, op: str, data: Any) -> dict[str, Any]:
    plan = wplan.plan
    writable = wplan.writable(op)
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise ValidationError(
            f"data must be an object of field names and values. Fields you can write: {_names(writable)}"
        )
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
    return fit_datetime(column, out)


def fit_datetime(column: Any, value: Any) -> Any:
    # Naive timestamp columns get naive UTC values; drivers refuse or shift aware ones.
    if isinstance(value, dt.datetime) and isinstance(column.type, sqltypes.DateTime):
        if column.type.timezone and value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        if not column.type.timezone and value.tzinfo is not None:
            return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def auto_values(auto: Mapping[str, _AutoSet], principal: Principal) -> dict[str, Any]:
    """Server-set values for this principal, at this moment."""
    out: dict[str, Any] = {}
    now = dt.datetime.now(dt.timezone.utc)
    for name, spec in auto.items():
        if spec.now:
            out[name] = fit_datetime(spec.column, now)
        elif spec.path is not None:
            value = principal.resolve(spec.path)
            if value is None or value == "" or isinstance(value, (tuple, list, Mapping, bool)):
                raise AccessDeniedError(DENIED_MESSAGE)
            try:
                out[name] = _types.coercer_for(spec.column.type)(value)
            except ValueError:
                raise AccessDeniedError(DENIED_MESSAGE) from None
        else:
            out[name] = spec.literal
    return out


def _names(names: list[str]) -> str:
    return ", ".join(names) if names else "(none)"


def write_action(plan: ModelPlan, op: str) -> WriteAction:
    """The policy's action for `op` on the model; WriteNotAllowedError when it is Deny."""
    action: WriteAction = getattr(plan.policy.write_policy, op)
    if action is WriteAction.Deny:
        allowed = [o for o in OPERATIONS if getattr(plan.policy.write_policy, o) is not WriteAction.Deny]
        raise WriteNotAllowedError(
            f"{op} is not allowed on {plan.name}. "
            + (
                f"Writes you may request on {plan.name}: {', '.join(allowed)}"
                if allowed
                else f"{plan.name} is read-only."
            )
        )
    return action


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


__all__ = [
    "OPERATIONS",
    "Change",
    "Reference",
    "WritePlan",
    "auto_values",
    "build_write_plans",
    "fit_datetime",
    "normalize_arguments",
    "parse_change",
    "refusals",
    "write_action",
]
