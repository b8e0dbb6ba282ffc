"""Per-model plans: the policy checked against the mapped classes once, when a Toolset is built.

A plan holds everything a call needs that does not depend on the principal (columns, field
actions, coercers, parsed conditions, exposed relationships), so the per-call work is binding
principal values and the agent's arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Table, UniqueConstraint, and_, or_
from sqlalchemy import select as sql_select
from sqlalchemy.orm import DeclarativeMeta, Mapper, RelationshipProperty, class_mapper
from sqlalchemy.sql import FromClause

from ormai_agents import _types
from ormai_agents._conditions import (
    BoundCondition,
    ColumnBinding,
    ConditionSyntaxError,
    MissingPrincipalValue,
    parse_condition,
)
from ormai_agents._context import Principal
from ormai_agents._dialects import exact_equals, exact_in
from ormai_agents._errors import AccessDeniedError, PolicyError
from ormai_agents._paths import parse_principal_path
from ormai_agents.policy import FieldAction, ModelPolicy, Policy, RowPolicy

DENIED_MESSAGE = (
    "This call is not permitted for the current user: a value required by the access policy is "
    "missing from the user's identity. Ask the operator to check the user's tenant and roles."
)


@dataclass(slots=True)
class FieldInfo:
    """One mapped column as the policy exposes it."""

    name: str
    column: Any  # the Core Column
    action: FieldAction
    mask_show_last: int
    pytype: type | None
    coerce: Callable[[Any], Any]
    nullable: bool
    primary_key: bool
    # Most characters of a text filter value: the column's length, or the policy's maximum.
    max_text: int | None = None

    @property
    def plain(self) -> bool:
        """Readable as is: may be filtered, sorted, grouped and aggregated."""
        return self.action is FieldAction.Allow

    @property
    def comparable(self) -> bool:
        return self.plain and _types.is_comparable(self.pytype)


@dataclass(slots=True)
class RelationInfo:
    """A relationship the agent may include: both ends allowed, join columns plainly readable."""

    name: str
    target: str
    many: bool
    # (column on this model, column name on the target model)
    pairs: list[tuple[Any, str]]


@dataclass(slots=True)
class CompiledRowPolicy:
    policy: RowPolicy
    condition: BoundCondition


@dataclass(slots=True)
class Where:
    """The policy's part of a statement's WHERE clause for one principal, and what to audit."""

    clauses: list[ColumnElement[bool]]
    scopes: list[str]
    policies: list[str]
    bypass: bool
    # For writes: the scope and restrict policies without permit policies. A permit policy
    # widens what the principal may read, never what it may change.
    write_clauses: list[ColumnElement[bool]] = field(default_factory=list)


@dataclass(slots=True)
class ModelPlan:
    name: str
    cls: type
    mapper: Mapper[Any]
    selectable: FromClause
    policy: ModelPolicy
    columns: dict[str, Any]  # every mapped column by attribute name (conditions may use any)
    fields: dict[str, FieldInfo]  # readable fields (Allow, Mask, Hash), in mapper order
    pk: list[FieldInfo | None]
    pk_columns: list[Any]
    pk_coercers: list[Callable[[Any], Any]]
    scoping: list[tuple[str, Any, tuple[str, ...], Callable[[Any], Any]]]
    restricts: list[CompiledRowPolicy]
    permits: list[CompiledRowPolicy]
    bypasses: list[CompiledRowPolicy]
    max_rows: int
    # What makes the order of rows total without revealing anything the agent can't read:
    # plainly readable, comparable, NOT NULL fields that are unique together (the primary key
    # when it is readable, else the shortest such unique constraint). None when there is none:
    # rows are then ordered by every readable comparable field, and a query is one page.
    tiebreak: list[FieldInfo] | None = None
    relations: dict[str, RelationInfo] = field(default_factory=dict)
    _where_cache: dict[Principal, Where] = field(default_factory=dict)

    @property
    def order_fields(self) -> list[FieldInfo]:
        """The fields that end every ORDER BY on this model (see `tiebreak`)."""
        if self.tiebreak is not None:
            return self.tiebreak
        return [f for f in self.fields.values() if f.comparable]

    def select(self, columns: list[Any]) -> Any:
        """SELECT of these columns from the model's table (or the join of an inherited mapping)."""
        stmt = sql_select(*columns)
        # A plain table is inferred from the columns; a joined-inheritance join must be named.
        return stmt if isinstance(self.selectable, Table) else stmt.select_from(self.selectable)

    @property
    def keyed(self) -> bool:
        """Records can be named by primary key: every key column is a plainly readable field."""
        return all(info is not None and info.plain for info in self.pk)

    @property
    def plain_fields(self) -> list[str]:
        return [n for n, f in self.fields.items() if f.plain]

    @property
    def comparable_fields(self) -> list[str]:
        return [n for n, f in self.fields.items() if f.comparable]

    def where(self, principal: Principal) -> Where:
        """The scoping and row-policy clauses for this principal (cached per principal).

        Raises AccessDeniedError when a scoping value or a value a restrict policy needs is
        missing, null, empty, or does not fit its column: the call is refused, never unscoped.
        """
        cached = self._where_cache.get(principal)
        if cached is not None:
            return cached
        where = self._build_where(principal)
        if len(self._where_cache) > 4096:
            self._where_cache.clear()
        self._where_cache[principal] = where
        return where

    def _build_where(self, principal: Principal) -> Where:
        resolve = principal.resolve
        applied: list[str] = []
        bypass = False
        for rp in self.bypasses:
            try:
                if rp.condition.evaluate(resolve):
                    bypass = True
                    applied.append(rp.policy.name)
                    break
            except MissingPrincipalValue:
                continue  # a bypass whose inputs are missing does not hold
        clauses: list[ColumnElement[bool]] = []
        write_clauses: list[ColumnElement[bool]] = []
        scopes: list[str] = []
        if self.scoping and not bypass:
            scope_parts: list[ColumnElement[bool]] = []
            for name, column, path, coerce in self.scoping:
                value = resolve(path)
                clause, shown = _scope_clause(column, value, coerce)
                scope_parts.append(clause)
                scopes.append(f"{name} {shown}")
            scope: ColumnElement[bool] = and_(*scope_parts) if len(scope_parts) > 1 else scope_parts[0]
            permits: list[ColumnElement[bool]] = []
            for rp in self.permits:
                try:
                    permits.append(rp.condition.compile(resolve))
                    applied.append(rp.policy.name)
                except MissingPrincipalValue:
                    continue  # a permit policy whose inputs are missing grants nothing
            clauses.append(or_(scope, *permits) if permits else scope)
            write_clauses.append(scope)
        for rp in self.restricts:
            try:
                restrict = rp.condition.compile(resolve)
            except MissingPrincipalValue:
                raise AccessDeniedError(DENIED_MESSAGE) from None
            clauses.append(restrict)
            write_clauses.append(restrict)
            applied.append(rp.policy.name)
        return Where(clauses, scopes, applied, bypass, write_clauses)


def _scope_clause(column: Any, value: Any, coerce: Callable[[Any], Any]) -> tuple[ColumnElement[bool], str]:
    if isinstance(value, (tuple, list, set, frozenset)):
        values = list(value)
        if not values:
            raise AccessDeniedError(DENIED_MESSAGE)
        coerced = [_scope_value(coerce, v) for v in values]
        return exact_in(column, coerced), "IN (" + ", ".join(_show(v) for v in coerced) + ")"
    coerced_one = _scope_value(coerce, value)
    return exact_equals(column, coerced_one), f"= {_show(coerced_one)}"


def _scope_value(coerce: Callable[[Any], Any], value: Any) -> Any:
    if value is None or value == "" or isinstance(value, (dict, bool)) or hasattr(value, "keys"):
        raise AccessDeniedError(DENIED_MESSAGE)
    try:
        out = coerce(value)
    except ValueError:
        raise AccessDeniedError(DENIED_MESSAGE) from None
    if out is None or out == "":
        raise AccessDeniedError(DENIED_MESSAGE)
    return out


def _show(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def _mapped_classes(models: Any) -> list[type]:
    registry = getattr(models, "registry", None)
    if isinstance(models, type) and registry is not None and hasattr(registry, "mappers"):
        return [m.class_ for m in registry.mappers]
    if isinstance(models, (type, DeclarativeMeta)):
        return [models]
    if isinstance(models, Iterable):
        return list(models)
    raise PolicyError("models must be a declarative base class or an iterable of mapped classes")


def build_plans(models: Any, policy: Policy, *, hidden: bool = False) -> dict[str, ModelPlan]:
    """Check the policy against the mapped classes and compile a plan per allowed model.

    With `hidden=True`, the plans of the models the policy lists with `allowed=False` instead:
    they exist for the agent nowhere, but their scoping bounds the references writes may set."""
    classes: dict[str, type] = {}
    for cls in _mapped_classes(models):
        try:
            class_mapper(cls)
        except Exception:  # noqa: BLE001 - whatever SQLAlchemy raises, the class can't be used
            raise PolicyError(f"{getattr(cls, '__name__', cls)!r} is not a mapped class") from None
        if cls.__name__ in classes and classes[cls.__name__] is not cls and cls.__name__ in policy.models:
            raise PolicyError(f"two mapped classes are named {cls.__name__!r}; the policy can't tell them apart")
        classes[cls.__name__] = cls
    for name in policy.models:
        if name not in classes:
            raise PolicyError(f"policy names model {name!r}, which is not among the mapped classes")

    plans: dict[str, ModelPlan] = {}
    for name, mp in policy.models.items():
        if mp.allowed != hidden:
            plans[name] = _build_plan(name, classes[name], mp, policy)
    if not hidden:
        for plan in plans.values():
            plan.relations = _relations(plan, plans)
    return plans


def _build_plan(name: str, cls: type, mp: ModelPolicy, policy: Policy) -> ModelPlan:
    mapper: Mapper[Any] = class_mapper(cls)
    if mapper.single and mapper.inherits is not None:
        raise PolicyError(
            f"{name}: single-table inheritance subclasses are not supported; expose the base class and "
            "scope it with a row policy on the discriminator column"
        )
    columns: dict[str, Any] = {}
    for prop in mapper.column_attrs:
        if len(prop.columns) == 1 and hasattr(prop.columns[0], "table"):
            columns[prop.key] = prop.columns[0]

    def col(field_name: str, where: str) -> Any:
        if field_name not in columns:
            raise PolicyError(f"{name}: {where} names {field_name!r}, which is not a mapped column of {name}")
        return columns[field_name]

    wp = mp.write_policy
    for label, names in (
        ("fields", list(mp.fields)),
        ("scoping", list(mp.scoping)),
        ("write_policy.auto_set", list(wp.auto_set)),
        ("write_policy.auto_set_on_update", list(wp.auto_set_on_update)),
        ("write_policy.immutable_fields", wp.immutable_fields),
        ("write_policy.required_fields", wp.required_fields),
    ):
        for fname in names:
            col(fname, label)
    fields = _fields(mapper, columns, mp, policy)
    pk_columns = list(mapper.primary_key)
    attr_by_column = {columns[k]: k for k in columns}
    pk = [fields.get(attr_by_column.get(c, "")) for c in pk_columns]
    scoping = [
        (fname, columns[fname], parse_principal_path(path), _types.coercer_for(columns[fname].type))
        for fname, path in mp.scoping.items()
    ]
    restricts, permits, bypasses = _row_policies(name, mp, columns)
    return ModelPlan(
        name=name,
        cls=cls,
        mapper=mapper,
        selectable=mapper.persist_selectable,
        policy=mp,
        columns=columns,
        fields=fields,
        pk=pk,
        pk_columns=pk_columns,
        pk_coercers=[_types.coercer_for(c.type) for c in pk_columns],
        scoping=scoping,
        restricts=restricts,
        permits=permits,
        bypasses=bypasses,
        max_rows=mp.max_rows or policy.max_rows,
        tiebreak=_tiebreak(mapper, fields, pk_columns),
    )


def _fields(mapper: Mapper[Any], columns: dict[str, Any], mp: ModelPolicy, policy: Policy) -> dict[str, FieldInfo]:
    """The readable fields (Allow, Mask, Hash), in mapper order."""
    pk_names = {c.key for c in mapper.primary_key}
    fields: dict[str, FieldInfo] = {}
    for fname, column in columns.items():
        fp = mp.fields.get(fname)
        action = fp.action if fp is not None else mp.default_field_action
        if action is FieldAction.Deny:
            continue
        pt = _types.python_type(column.type)
        fields[fname] = FieldInfo(
            name=fname,
            column=column,
            action=action,
            mask_show_last=fp.mask_show_last if fp is not None else 0,
            pytype=pt,
            coerce=_types.coercer_for(column.type),
            nullable=bool(column.nullable),
            primary_key=column.primary_key or column.key in pk_names,
            max_text=_max_text(column, pt, policy.max_filter_text_length),
        )
    return fields


def _row_policies(
    name: str, mp: ModelPolicy, columns: dict[str, Any]
) -> tuple[list[CompiledRowPolicy], list[CompiledRowPolicy], list[CompiledRowPolicy]]:
    """The model's row policies parsed and bound: (restricts, permits, bypasses)."""
    bindings = {k: ColumnBinding(c, _types.coercer_for(c.type)) for k, c in columns.items()}
    restricts: list[CompiledRowPolicy] = []
    permits: list[CompiledRowPolicy] = []
    bypasses: list[CompiledRowPolicy] = []
    for rp in mp.row_policies:
        try:
            bound = BoundCondition(parse_condition(rp.condition), bindings)
        except ConditionSyntaxError as exc:
            raise PolicyError(f"{name}: row policy {rp.name!r}: {exc}") from None
        compiled = CompiledRowPolicy(rp, bound)
        if rp.bypass:
            if not bound.principal_only:
                raise PolicyError(
                    f"{name}: row policy {rp.name!r} is a bypass, so its condition may refer only to the principal"
                )
            bypasses.append(compiled)
        elif rp.mode == "permit":
            if not mp.scoping:
                raise PolicyError(
                    f"{name}: row policy {rp.name!r} is mode='permit', which widens the scoping, but {name} has "
                    "no scoping, so every row is already visible. Use mode='restrict' to limit rows."
                )
            permits.append(compiled)
        else:
            restricts.append(compiled)
    return restricts, permits, bypasses


def _tiebreak(mapper: Mapper[Any], fields: dict[str, FieldInfo], pk_columns: list[Any]) -> list[FieldInfo] | None:
    by_column = {f.column: f for f in fields.values()}

    def readable(columns: Any) -> list[FieldInfo] | None:
        infos = [by_column.get(c) for c in columns]
        if infos and all(i is not None and i.comparable and (i.primary_key or not i.nullable) for i in infos):
            return infos  # type: ignore[return-value]
        return None

    found = readable(pk_columns)
    if found is not None:
        return found
    table = mapper.local_table
    uniques = [c.columns for c in getattr(table, "constraints", ()) if isinstance(c, UniqueConstraint)]
    uniques += [ix.columns for ix in getattr(table, "indexes", ()) if ix.unique]
    candidates = [r for r in (readable(list(cols)) for cols in uniques) if r is not None]
    return min(candidates, key=len) if candidates else None


def _max_text(column: Any, pt: type | None, policy_max: int) -> int | None:
    if not _types.is_text(pt):
        return None
    length = getattr(column.type, "length", None)
    return min(length, policy_max) if isinstance(length, int) and length > 0 else policy_max


def _relations(plan: ModelPlan, plans: dict[str, ModelPlan]) -> dict[str, RelationInfo]:
    out: dict[str, RelationInfo] = {}
    for rel in plan.mapper.relationships:
        if not isinstance(rel, RelationshipProperty) or rel.secondary is not None:
            continue  # association tables: not exposed
        target_name = rel.mapper.class_.__name__
        target = plans.get(target_name)
        if target is None or rel.mapper.class_ is not target.cls:
            continue  # a model the policy does not allow does not exist for the agent
        pairs: list[tuple[Any, str]] = []
        ok = True
        local_attr = {c: k for k, c in plan.columns.items()}
        remote_attr = {c: k for k, c in target.columns.items()}
        for local, remote in rel.local_remote_pairs or []:
            lname, rname = local_attr.get(local), remote_attr.get(remote)
            # Join columns must be plainly readable on both sides, or the include would reveal them.
            if lname is None or rname is None or not _plain(plan, lname) or not _plain(target, rname):
                ok = False
                break
            pairs.append((local, rname))
        if ok and pairs:
            out[rel.key] = RelationInfo(rel.key, target_name, bool(rel.uselist), pairs)
    return out


def _plain(plan: ModelPlan, name: str) -> bool:
    info = plan.fields.get(name)
    return info is not None and info.plain


__all__ = ["DENIED_MESSAGE", "FieldInfo", "ModelPlan", "RelationInfo", "Where", "build_plans"]
