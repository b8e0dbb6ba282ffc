"""The read path: describe_schema, query, get and aggregate.

Each read is a short pipeline over an explicit `Call`: resolve the plan and the principal's
WHERE clauses (`ModelPlan.where`), parse the agent's arguments (`ormai_agents._inputs`), build one
Core statement, fetch its rows (`fetch`, which retries a transient failure only when the call owns
the transaction), shape them for the agent (`Runtime.shaper`: masks and hashes), fill included
relationships under their own model's policy (`attach`), and seal the next page's cursor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, and_, bindparam, false, func, or_, tuple_
from sqlalchemy import select as sql_select

from ormai_agents import _inputs
from ormai_agents._call import Call
from ormai_agents._dberrors import map_db_errors, retrying
from ormai_agents._dialects import exact_order, is_text, nulls_last
from ormai_agents._errors import (
    DatabaseError,
    InvalidCursorError,
    RecordNotFoundError,
    TransientDatabaseError,
    ValidationError,
)
from ormai_agents._inputs import ParsedFilter
from ormai_agents._operations import AGGREGATE_FUNCTIONS, FILTER_OPERATORS
from ormai_agents._plan import FieldInfo, ModelPlan, RelationInfo
from ormai_agents._results import AggregateResult, GetResult, QueryResult, SchemaResult
from ormai_agents._runtime import Runtime
from ormai_agents._types import is_numeric, json_schema_for
from ormai_agents.policy import FieldAction

_READ_RETRIES = 3  # attempts after the first failure
_CURSOR_MISMATCH = "The cursor does not match this query. Repeat the query without a cursor."
Tree = dict[str, tuple[RelationInfo, dict[str, Any]]]


# --- the tools ----------------------------------------------------------------------------


async def describe_schema(call: Call) -> SchemaResult:
    """The models, fields, relationships and writes the agent may use."""
    runtime = call.runtime
    models = {name: describe_model(runtime, plan) for name, plan in runtime.plans.items()}
    call.row_count = len(models)
    return SchemaResult(models)


async def query(
    call: Call, filters: Any, select: Any, order_by: Any, limit: Any, cursor: Any, include: Any
) -> QueryResult:
    """Rows of `call.model` in the principal's scope matching `filters`, one page at a time."""
    runtime = call.runtime
    principal = call.ctx.principal
    plan = call.plan = runtime.plan(call.model)
    where = call.where = plan.where(principal)
    parsed, canon = _inputs.parse_filter_specs(plan, filters)
    names = _inputs.parse_select(plan, select)
    order = _inputs.parse_order(plan, order_by)
    size = _inputs.parse_limit(plan, limit)
    tree = _inputs.parse_include(runtime.plans, plan, include, runtime.policy.max_include_depth)

    keys = _sort_keys(plan, order)
    # Without a readable unique key there is no stable page boundary: the query is one page, and
    # `truncated` says when rows were left out.
    pageable = plan.tiebreak is not None
    order_key = [(info.name, desc) for info, desc in order]
    fsig, params = _filter_params(parsed)
    after: list[Any] | None = None
    if cursor is not None:
        after = _open_cursor(runtime, keys, cursor, runtime.binding(principal, plan, canon, order_key), pageable)
        params.update({f"ormai_c{i}": v for i, v in enumerate(after) if v is not None})
    params["ormai_limit"] = size + 1

    def build() -> tuple[Any, list[int], int]:
        # Rows are read by position: no labels, so the statement stays as lean as hand-written
        # Core. A sort key that is also selected is read from its selected position.
        columns = [plan.fields[n].column for n in names]
        key_at = []
        for k in keys:
            try:
                key_at.append(columns.index(k.column))
            except ValueError:
                key_at.append(len(columns))
                columns.append(k.column)
        rel_at = len(columns)
        columns += _relation_key_columns(tree)
        conditions = _bound_filters(parsed)
        if after is not None:
            conditions.append(_keyset_after(keys, _cursor_binds(keys, after)))
        stmt = (
            plan.select(columns)
            .where(*where.clauses, *conditions)
            .order_by(*(_order_clause(k) for k in keys), *_collation_ties(plan))
            .limit(bindparam("ormai_limit"))
        )
        return stmt, key_at, rel_at

    csig = None if after is None else tuple(v is None for v in after)
    shape = ("query", plan.name, principal, tuple(names), fsig, tuple(order_key), csig, _tree_shape(tree))
    stmt, key_at, rel_at = runtime.statement(shape, build)
    rows = await fetch(call, stmt, params)
    more = len(rows) > size
    rows = rows[:size]
    out = runtime.rows_shaper(plan, names)(rows)
    if tree:
        await attach(call, plan, tree, rows, out, rel_at)
    next_cursor = None
    if more and rows and pageable:
        binding = runtime.binding(principal, plan, canon, order_key)
        next_cursor = runtime.cursors.seal(binding, [_jsonable(rows[-1][i]) for i in key_at])
    call.row_count = len(out)
    return QueryResult(out, next_cursor, truncated=more and not pageable)


async def get(call: Call, id: Any, select: Any, include: Any) -> GetResult:
    """One row by primary key. Missing and out-of-scope rows raise the same RecordNotFoundError."""
    runtime = call.runtime
    principal = call.ctx.principal
    plan = call.plan = runtime.plan(call.model)
    where = call.where = plan.where(principal)
    key = _inputs.parse_id(plan, id)
    names = _inputs.parse_select(plan, select)
    tree = _inputs.parse_include(runtime.plans, plan, include, runtime.policy.max_include_depth)

    def build() -> Any:
        columns = [plan.fields[n].column for n in names] + _relation_key_columns(tree)
        by_key = [c == bindparam(f"ormai_k{i}", type_=c.type) for i, c in enumerate(plan.pk_columns)]
        return plan.select(columns).where(*where.clauses, *by_key)

    stmt = runtime.statement(("get", plan.name, principal, tuple(names), _tree_shape(tree)), build)
    rows = await fetch(call, stmt, {f"ormai_k{i}": v for i, v in enumerate(key)})
    if not rows:
        raise RecordNotFoundError(
            f"No {plan.name} with that id is visible to you. Use query to find the records you can see."
        )
    out = runtime.rows_shaper(plan, names)(rows[:1])
    if tree:
        await attach(call, plan, tree, rows, out, len(names))
    call.row_count = 1
    return GetResult(out[0])


async def aggregate(call: Call, function: Any, field: Any, filters: Any, group_by: Any) -> AggregateResult:
    """count/sum/avg/min/max over the principal's rows; grouped when `group_by` is given."""
    runtime = call.runtime
    principal = call.ctx.principal
    plan = call.plan = runtime.plan(call.model)
    where = call.where = plan.where(principal)
    parsed, _ = _inputs.parse_filter_specs(plan, filters)
    expr = _aggregate_expr(plan, function, field)
    groups = _inputs.parse_group_by(plan, group_by)
    fsig, params = _filter_params(parsed)
    group_names = tuple(g.name for g in groups)

    def build() -> Any:
        conditions = _bound_filters(parsed)
        if not groups:
            return sql_select(expr).select_from(plan.selectable).where(*where.clauses, *conditions)
        group_cols = [g.column for g in groups]
        # Grouped in a derived table, ordered and bounded outside it: with the LIMIT beside its
        # GROUP BY, MariaDB 10.11 reads a tenant holding a third of the table through the scope
        # index (a range scan) instead of scanning the table, 1.4x slower than without the
        # LIMIT; SQLite and PostgreSQL run both forms alike. The labels are ours, not the
        # fields' names, so none can clash in the derived table.
        grouped = (
            sql_select(*(c.label(f"ormai_g{i}") for i, c in enumerate(group_cols)), expr.label("ormai_value"))
            .select_from(plan.selectable)
            .where(*where.clauses, *conditions)
            .group_by(*group_cols)
            .subquery("ormai_groups")
        )
        columns = list(grouped.c)
        return sql_select(*columns).order_by(*columns[:-1]).limit(plan.max_rows + 1)

    stmt = runtime.statement(("aggregate", plan.name, principal, function, field, fsig, group_names), build)
    rows = await fetch(call, stmt, params)
    if not groups:
        call.row_count = 1
        return AggregateResult(value=rows[0][0])
    names = [*group_names, "value"]
    out = [dict(zip(names, row, strict=True)) for row in rows[: plan.max_rows]]
    call.row_count = len(out)
    return AggregateResult(groups=out, truncated=len(rows) > plan.max_rows)


# --- filters as bound parameters ------------------------------------------------------------

def _filter_params(parsed: list[ParsedFilter]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The filters' shape (what changes the SQL) and their values as bind parameters."""
    shape: list[Any] = []
    params: dict[str, Any] = {}
    for i, f in enumerate(parsed):
        operator = FILTER_OPERATORS[f.op]
        kind = operator.shape
        name = f"ormai_f{i}"
        if kind == "flag":
            shape.append((f.info.name, f.op, f.value))  # IS NULL / IS NOT NULL: no value to bind
            continue
        shape.append((f.info.name, f.op))
        if kind == "pair":
            params[name + "a"], params[name + "b"] = f.value
        elif kind == "text":
            params[name] = operator.pattern(f.value)
        else:
            params[name] = f.value
    return tuple(shape), params


def _bound_filters(parsed: list[ParsedFilter]) -> list[Any]:
    """The filters' clauses with the parameters `_filter_params` names."""
    out = []
    for i, f in enumerate(parsed):
        operator = FILTER_OPERATORS[f.op]
        column, name, kind = f.info.column, f"ormai_f{i}", operator.shape
        if kind == "flag":
            out.append(operator.clause(column, f.value))
        elif kind == "list":
            out.append(operator.clause(column, bindparam(name, expanding=True, type_=column.type)))
        elif kind == "pair":
            bounds = [bindparam(name + "a", type_=column.type), bindparam(name + "b", type_=column.type)]
            out.append(operator.clause(column, bounds))
        elif kind == "text":
            out.append(column.like(bindparam(name, type_=column.type), escape="/"))
        else:
            out.append(operator.clause(column, bindparam(name, type_=column.type)))
    return out


def _tree_shape(tree: Tree) -> tuple[Any, ...]:
    return tuple((name, _tree_shape(sub)) for name, (_, sub) in tree.items())


def describe_model(runtime: Runtime, plan: ModelPlan) -> dict[str, Any]:
    """One model as describe_schema shows it."""
    fields: dict[str, Any] = {}
    for name, info in plan.fields.items():
        entry: dict[str, Any] = {**json_schema_for(info.pytype, info.column.type), "nullable": info.nullable}
        if info.primary_key:
            entry["primary_key"] = True
        if info.action is not FieldAction.Allow:
            entry["returned_as"] = "masked" if info.action is FieldAction.Mask else "hashed"
        else:
            entry["filterable"] = True
            entry["sortable"] = info.comparable
        fields[name] = entry
    # The write tools that exist for this model: the same table the tool builder reads.
    writes = {op: action.value for op, action in runtime.write_plans[plan.name].operations.items()}
    out: dict[str, Any] = {"fields": fields, "max_rows": plan.max_rows}
    if plan.policy.description:
        out["description"] = plan.policy.description
    if plan.relations:
        out["relationships"] = {n: {"model": r.target, "many": r.many} for n, r in plan.relations.items()}
    if writes:
        out["writes"] = writes
    return out


# --- statements -----------------------------------------------------------------------------


async def fetch(call: Call, stmt: Any, params: dict[str, Any] | None = None) -> list[Any]:
    """Run a read statement of the call.

    A transient failure is retried (with tenacity) only when the call opened the transaction
    itself: rolling back to retry must never discard the host's own work.
    """
    db = call.db
    fresh = call.owns_transaction()
    try:
        return await db.fetch(stmt, params, deadline=call.deadline)
    except TransientDatabaseError:
        if not fresh:
            raise
    except (DatabaseError, ValidationError):  # ValidationError: a value the database refused
        # A failed statement aborts a PostgreSQL transaction; when this call opened it, roll it
        # back so the host's session stays usable for the next call.
        if fresh:
            await _rollback(call)
        raise
    async for attempt in retrying(_READ_RETRIES):
        with attempt:
            await _rollback(call)
            if call.runtime.rls_paths is not None:
                await call.set_rls()  # the rollback discarded them
            return await db.fetch(stmt, params, deadline=call.deadline)
    raise AssertionError("unreachable")  # pragma: no cover


async def _rollback(call: Call) -> None:
    with map_db_errors("roll back"):
        await call.db.rollback()


async def attach(
    call: Call, plan: ModelPlan, tree: Tree, rows: list[Any], out: list[dict[str, Any]], offset: int
) -> list[int]:
    """Fill included relationships into `out`, one statement per relationship and level.

    The related model's own policy applies: its scoping, row policies and field actions. Returns
    how many related rows each item of `out` now carries, at every level. The whole result may
    carry at most `max_include_rows` of them (a row included under several parents counts each
    time, as the agent receives it): beyond that the call fails, since a cut list would mislead.
    """
    limit = call.runtime.policy.max_include_rows
    weights = [0] * len(out)
    for rel_name, (rel, subtree) in tree.items():
        width = len(rel.pairs)
        parent_keys = [tuple(row[offset + i] for i in range(width)) for row in rows]
        offset += width
        found = await _related(call, rel, subtree, {k for k in parent_keys if None not in k}, limit)
        for i, (item, key) in enumerate(zip(out, parent_keys, strict=True)):
            matches = found.get(key, [])
            if not rel.many:
                matches = matches[:1]
            weights[i] += sum(1 + w for _, w in matches)
            item[rel_name] = [m for m, _ in matches] if rel.many else (matches[0][0] if matches else None)
        if sum(weights) > limit:
            raise _too_many_included(limit)
    return weights


async def _related(
    call: Call, rel: RelationInfo, subtree: Tree, keys: set[tuple[Any, ...]], limit: int
) -> dict[tuple[Any, ...], list[tuple[dict[str, Any], int]]]:
    """The related rows of one relationship by parent key, shaped, each with its own weight."""
    if not keys:
        return {}
    target = call.runtime.plans[rel.target]
    twhere = target.where(call.ctx.principal)
    names = list(target.fields)
    width = len(rel.pairs)
    remote = [target.columns[r] for _, r in rel.pairs]
    cols = [target.fields[n].column.label(n) for n in names]
    cols += [c.label(f"_r{i}") for i, c in enumerate(remote)]
    cols += _relation_key_columns(subtree)
    match = remote[0].in_([k[0] for k in keys]) if width == 1 else tuple_(*remote).in_(list(keys))
    stmt: Any = sql_select(*cols).select_from(target.selectable).where(*twhere.clauses, match)
    if rel.many:
        # Each parent's first max_rows related rows, ordered by readable fields only.
        order = [_order_clause(_SortKey(f.column, False, f.nullable, f.coerce)) for f in target.order_fields]
        order += _collation_ties(target)
        rank = func.row_number().over(partition_by=remote, order_by=order or None).label("_rn")
        ranked = stmt.add_columns(rank).subquery()
        stmt = sql_select(*(c for c in ranked.c if c.key != "_rn")).where(ranked.c["_rn"] <= target.max_rows)
    # Every row fetched is returned at least once: more than the limit can't fit.
    related = await fetch(call, stmt.limit(limit + 1))
    if len(related) > limit:
        raise _too_many_included(limit)
    shaped = call.runtime.rows_shaper(target, names)(related)
    sub = await attach(call, target, subtree, related, shaped, len(names) + width) if subtree else None
    found: dict[tuple[Any, ...], list[tuple[dict[str, Any], int]]] = {}
    for j, (r, item) in enumerate(zip(related, shaped, strict=True)):
        found.setdefault(tuple(r[len(names) + i] for i in range(width)), []).append((item, sub[j] if sub else 0))
    return found


# --- order and cursors ------------------------------------------------------------------------


class _SortKey(NamedTuple):
    column: Any
    desc: bool
    nullable: bool
    coerce: Callable[[Any], Any]


def _sort_keys(plan: ModelPlan, order: list[tuple[FieldInfo, bool]]) -> list[_SortKey]:
    """The agent's order, then the plan's readable tie-break: the order must reveal nothing of a
    field the agent can't read (a hidden primary key included)."""
    keys = [_SortKey(info.column, desc, info.nullable, info.coerce) for info, desc in order]
    ordered = {info.name for info, _ in order}
    keys += [_SortKey(f.column, False, f.nullable, f.coerce) for f in plan.order_fields if f.name not in ordered]
    return keys


def _collation_ties(plan: ModelPlan) -> list[Any]:
    """ORDER BY keys after every readable field of a model without a readable unique key: rows
    a collation holds equal ('k1' and 'K1' on MariaDB) are ordered by their bytes, not left in
    the database's order, which follows a key the agent can't read."""
    if plan.tiebreak is not None:
        return []
    return [
        _order_clause(_SortKey(exact_order(f.column), False, f.nullable, f.coerce))
        for f in plan.order_fields
        if is_text(f.column)
    ]


def _open_cursor(runtime: Runtime, keys: list[_SortKey], cursor: Any, binding: str, pageable: bool) -> list[Any]:
    """The cursor's sort-key values, coerced to the keys' types; InvalidCursorError for any mismatch."""
    if not pageable:
        raise InvalidCursorError(_CURSOR_MISMATCH)
    after = runtime.cursors.open(cursor, binding)
    if len(after) != len(keys):
        raise InvalidCursorError(_CURSOR_MISMATCH)
    try:
        return [None if v is None else k.coerce(v) for k, v in zip(keys, after, strict=True)]
    except ValueError:
        raise InvalidCursorError(_CURSOR_MISMATCH) from None


def _cursor_binds(keys: list[_SortKey], after: list[Any]) -> list[Any]:
    """The cursor's values as the bind parameters `query` passes (None stays None: it changes the SQL)."""
    return [
        None if v is None else bindparam(f"ormai_c{i}", type_=k.column.type)
        for i, (k, v) in enumerate(zip(keys, after, strict=True))
    ]


def _order_clause(key: _SortKey) -> Any:
    if not key.desc and not key.nullable:
        return key.column  # ascending is the default: no wrapper to build and compile
    clause = key.column.desc() if key.desc else key.column.asc()
    # NULLs sort last in both directions on every backend, so keyset pages agree with ORDER BY.
    return nulls_last(clause) if key.nullable else clause


def _keyset_after(keys: list[_SortKey], values: list[Any]) -> ColumnElement[bool]:
    """Rows strictly after `values` in the order of `keys` (NULLs last)."""
    if not any(k.nullable for k in keys) and len({k.desc for k in keys}) == 1:
        if len(keys) == 1:
            lhs, rhs = keys[0].column, values[0]
        else:
            lhs, rhs = tuple_(*(k.column for k in keys)), tuple_(*values)
        return lhs < rhs if keys[0].desc else lhs > rhs  # type: ignore[no-any-return]
    branches = []
    for i, key in enumerate(keys):
        ties = [
            k.column.is_not_distinct_from(v) if k.nullable else k.column == v
            for k, v in zip(keys[:i], values[:i], strict=True)
        ]
        value = values[i]
        if value is None:
            continue  # nothing sorts after NULL on this key except through later keys
        step = key.column < value if key.desc else key.column > value
        if key.nullable:
            step = or_(step, key.column.is_(None))
        branches.append(and_(*ties, step))
    return or_(*branches) if branches else false()


# --- small helpers --------------------------------------------------------------------------


def _aggregate_expr(plan: ModelPlan, function: Any, field: Any) -> Any:
    if function not in AGGREGATE_FUNCTIONS:
        raise ValidationError(f"function must be one of: {', '.join(AGGREGATE_FUNCTIONS)}")
    if field is None:
        if function != "count":
            raise ValidationError(f"{function} needs a field")
        return func.count()
    info = _inputs.comparable_field(
        plan, field, f"That field can't be aggregated on {plan.name}. Fields you can aggregate: {{fields}}"
    )
    if function in ("sum", "avg") and not is_numeric(info.pytype):
        numeric = [n for n in plan.comparable_fields if is_numeric(plan.fields[n].pytype)]
        raise ValidationError(f"{function} needs a numeric field. Numeric fields: {', '.join(numeric) or '(none)'}")
    return getattr(func, function)(info.column)


def _too_many_included(limit: int) -> ValidationError:
    return ValidationError(
        f"include would return more than {limit} related records in one call. Ask for fewer rows with "
        "limit, include fewer relationships, or query the related model with filters."
    )


def _relation_key_columns(tree: Tree) -> list[Any]:
    out = []
    for rel_name, (rel, _) in tree.items():
        out += [local.label(f"_j_{rel_name}_{i}") for i, (local, _) in enumerate(rel.pairs)]
    return out


def _jsonable(value: Any) -> Any:
    if hasattr(value, "value") and not isinstance(value, (int, float, str)):
        return value.value  # enums
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return str(value)


__all__ = ["aggregate", "attach", "describe_model", "describe_schema", "fetch", "get", "query"]
