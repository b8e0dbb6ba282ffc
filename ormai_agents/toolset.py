"""`Toolset`: the framework-neutral tools. Every call: validate → policy → one statement → rows → audit."""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, and_, false, func, or_, tuple_
from sqlalchemy import select as sql_select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ormai_agents import _inputs
from ormai_agents._context import Principal, RunContext
from ormai_agents._cursor import CursorCodec, derive_key
from ormai_agents._dberrors import map_db_errors
from ormai_agents._errors import (
    DatabaseError,
    FieldNotAllowedError,
    InvalidCursorError,
    ModelNotAllowedError,
    OrmAIError,
    RecordNotFoundError,
    TransientDatabaseError,
    ValidationError,
)
from ormai_agents._plan import FieldInfo, ModelPlan, RelationInfo, Where, build_plans
from ormai_agents._redact import redact_inputs
from ormai_agents._results import AggregateResult, GetResult, QueryResult, SchemaResult
from ormai_agents._types import is_numeric, json_schema_for
from ormai_agents.audit import AuditRecord, AuditStore, deliver
from ormai_agents.policy import FieldAction, Policy

log = logging.getLogger("ormai_agents")

_DENIED_CODES = {"access_denied", "model_not_allowed", "field_not_allowed", "write_not_allowed"}
_READ_TOOLS = frozenset({"describe_schema", "query", "get", "aggregate"})
_READ_RETRIES = 3  # attempts after the first failure


class Toolset:
    """The agent tools for a set of mapped classes under one policy.

    Build it once at start-up: the policy is checked against the models then (an unknown model,
    field or condition column raises `PolicyError`), and the per-model plans are compiled. Every
    method is a coroutine taking a `RunContext`; sync and async SQLAlchemy sessions both work.

    `secret_key` keys the cursor encryption and the HMAC of hashed fields. Pass a stable secret
    (32+ random bytes) so cursors and hashed values survive restarts; without one a random key
    is made per process.
    """

    def __init__(
        self,
        models: Any,
        policy: Policy,
        audit_store: AuditStore | None = None,
        *,
        secret_key: bytes | str | None = None,
        cursor_ttl_seconds: int = 3600,
    ) -> None:
        if not isinstance(policy, Policy):
            raise TypeError("policy must be an ormai_agents.policy.Policy")
        self.policy = policy
        self.audit_store = audit_store
        self._plans = build_plans(models, policy)
        if secret_key is None:
            secret = os.urandom(32)
        else:
            secret = secret_key.encode() if isinstance(secret_key, str) else bytes(secret_key)
            if len(secret) < 16:
                raise ValueError("secret_key must be at least 16 bytes")
        self._cursors = CursorCodec(secret, cursor_ttl_seconds)
        self._hash_key = derive_key(secret, "hash-field")
        self._principal_ids: dict[Principal, str] = {}
        self._row_shapers: dict[tuple[str, tuple[str, ...]], Callable[[Sequence[Any]], dict[str, Any]]] = {}

    # --- introspection ---------------------------------------------------------------------

    @property
    def model_names(self) -> list[str]:
        """The models agents may use."""
        return list(self._plans)

    def plan(self, model: Any) -> ModelPlan:
        """The compiled plan of a model the agent may use; ModelNotAllowedError otherwise."""
        plan = self._plans.get(model) if isinstance(model, str) else None
        if plan is None:
            raise ModelNotAllowedError(
                f"That model is not available. Models you can use: {', '.join(self._plans) or '(none)'}",
                details={"allowed_models": list(self._plans)},
            )
        return plan

    # --- tools -----------------------------------------------------------------------------

    async def describe_schema(self, ctx: RunContext) -> SchemaResult:
        """The models, fields, relationships and writes the agent may use."""
        async with _Call(self, ctx, "describe_schema", None, {}) as call:
            models = {name: self._describe(plan) for name, plan in self._plans.items()}
            call.row_count = len(models)
            return SchemaResult(models)

    async def query(
        self,
        ctx: RunContext,
        model: str,
        filters: Any = None,
        select: Any = None,
        order_by: Any = None,
        limit: Any = None,
        cursor: Any = None,
        include: Any = None,
    ) -> QueryResult:
        """Rows of `model` in the principal's scope matching `filters`, one page at a time."""
        inputs = {"filters": filters, "select": select, "order_by": order_by, "limit": limit,
                  "cursor": cursor, "include": include}  # fmt: skip
        async with _Call(self, ctx, "query", model, inputs) as call:
            plan = call.plan = self.plan(model)
            where = call.where = plan.where(ctx.principal)
            conditions, canon = _inputs.parse_filters(plan, filters)
            names = _inputs.parse_select(plan, select)
            order = _inputs.parse_order(plan, order_by)
            size = _inputs.parse_limit(plan, limit)
            tree = _inputs.parse_include(self._plans, plan, include, self.policy.max_include_depth)

            keys = [_SortKey(info.column, desc, info.nullable, info.coerce) for info, desc in order]
            ordered = {info.column for info, _ in order}
            keys += [
                _SortKey(c, False, False, coerce)
                for c, coerce in zip(plan.pk_columns, plan.pk_coercers)
                if c not in ordered
            ]
            order_key = [(info.name, desc) for info, desc in order]
            if cursor is not None:
                after = self._cursors.open(cursor, self._binding(ctx, plan, canon, order_key))
                if len(after) != len(keys):
                    raise InvalidCursorError("The cursor does not match this query. Repeat the query without a cursor.")
                try:
                    after = [None if v is None else k.coerce(v) for k, v in zip(keys, after)]
                except ValueError:
                    raise InvalidCursorError("The cursor does not match this query. Repeat the query without a cursor.") from None
                conditions.append(_keyset_after(keys, after))

            # Rows are read by position: no labels, so the statement stays as lean as hand-written Core.
            columns = [plan.fields[n].column for n in names]
            columns += [k.column for k in keys]
            columns += _relation_key_columns(tree)
            stmt = (
                sql_select(*columns)
                .select_from(plan.selectable)
                .where(*where.clauses, *conditions)
                .order_by(*(_order_clause(k) for k in keys))
                .limit(size + 1)
            )
            rows = await self._fetch(ctx, stmt)
            more = len(rows) > size
            rows = rows[:size]
            shape = self._shaper(plan, names)
            out = [shape(row) for row in rows]
            if tree:
                await self._attach(ctx, plan, tree, rows, out, len(names) + len(keys))
            next_cursor = None
            if more and rows:
                last = rows[-1]
                start = len(names)
                next_cursor = self._cursors.seal(
                    self._binding(ctx, plan, canon, order_key), [_jsonable(last[start + i]) for i in range(len(keys))]
                )
            call.row_count = len(out)
            return QueryResult(out, next_cursor)

    async def get(self, ctx: RunContext, model: str, id: Any, select: Any = None, include: Any = None) -> GetResult:
        """One row by primary key. Missing and out-of-scope rows raise the same RecordNotFoundError."""
        async with _Call(self, ctx, "get", model, {"id": id, "select": select, "include": include}) as call:
            plan = call.plan = self.plan(model)
            where = call.where = plan.where(ctx.principal)
            key = _inputs.parse_id(plan, id)
            names = _inputs.parse_select(plan, select)
            tree = _inputs.parse_include(self._plans, plan, include, self.policy.max_include_depth)
            columns = [plan.fields[n].column for n in names] + _relation_key_columns(tree)
            stmt = (
                sql_select(*columns)
                .select_from(plan.selectable)
                .where(*where.clauses, *(c == v for c, v in zip(plan.pk_columns, key)))
            )
            rows = await self._fetch(ctx, stmt)
            if not rows:
                raise RecordNotFoundError(
                    f"No {plan.name} with that id is visible to you. Use query to find the records you can see."
                )
            out = [self._shaper(plan, names)(rows[0])]
            if tree:
                await self._attach(ctx, plan, tree, rows, out, len(names))
            call.row_count = 1
            return GetResult(out[0])

    async def aggregate(
        self,
        ctx: RunContext,
        model: str,
        function: str = "count",
        field: str | None = None,
        filters: Any = None,
        group_by: Any = None,
    ) -> AggregateResult:
        """count/sum/avg/min/max over the principal's rows; grouped when `group_by` is given."""
        inputs = {"function": function, "field": field, "filters": filters, "group_by": group_by}
        async with _Call(self, ctx, "aggregate", model, inputs) as call:
            plan = call.plan = self.plan(model)
            where = call.where = plan.where(ctx.principal)
            conditions, _ = _inputs.parse_filters(plan, filters)
            expr = _aggregate_expr(plan, function, field)
            groups: list[FieldInfo] = []
            if group_by is not None:
                for name in _inputs._str_list(group_by, "group_by"):
                    info = plan.fields.get(name)
                    if info is None or not info.comparable:
                        usable = plan.comparable_fields
                        raise FieldNotAllowedError(
                            f"group_by names a field that can't be grouped on {plan.name}. "
                            f"Fields you can group by: {', '.join(usable) or '(none)'}",
                            details={"allowed_fields": usable},
                        )
                    if info not in groups:
                        groups.append(info)
            if not groups:
                stmt = sql_select(expr).select_from(plan.selectable).where(*where.clauses, *conditions)
                rows = await self._fetch(ctx, stmt)
                call.row_count = 1
                return AggregateResult(value=rows[0][0])
            group_cols = [g.column for g in groups]
            stmt = (
                sql_select(*(g.column.label(g.name) for g in groups), expr.label("value"))
                .select_from(plan.selectable)
                .where(*where.clauses, *conditions)
                .group_by(*group_cols)
                .order_by(*group_cols)
                .limit(plan.max_rows)
            )
            rows = await self._fetch(ctx, stmt)
            names = [g.name for g in groups] + ["value"]
            out = [dict(zip(names, row)) for row in rows]
            call.row_count = len(out)
            return AggregateResult(groups=out)

    # --- internals -------------------------------------------------------------------------

    async def _fetch(self, ctx: RunContext, stmt: Any) -> list[Any]:
        """Run a read statement.

        A transient failure is retried (with tenacity) only when the call opened the
        transaction itself: rolling back to retry must never discard the host's own work.
        """
        db = ctx.db
        fresh = not db.in_transaction()
        try:
            return await _execute(db, stmt)
        except TransientDatabaseError:
            if not fresh:
                raise
        except DatabaseError:
            # A failed statement aborts a PostgreSQL transaction; when this call opened it, roll
            # it back so the host's session stays usable for the next call.
            if fresh:
                await _rollback(db)
            raise
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(_READ_RETRIES),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            retry=retry_if_exception_type(TransientDatabaseError),
            reraise=True,
        ):
            with attempt:
                await _rollback(db)
                return await _execute(db, stmt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _binding(self, ctx: RunContext, plan: ModelPlan, filters: list[Any], order: list[Any]) -> str:
        """What a cursor is bound to: the principal, the model, the filters and the order."""
        who = self._principal_ids.get(ctx.principal)
        if who is None:
            who = hashlib.sha256(_inputs.canonical(ctx.principal.to_dict()).encode()).hexdigest()
            if len(self._principal_ids) > 4096:
                self._principal_ids.clear()
            self._principal_ids[ctx.principal] = who
        return who + _inputs.canonical([plan.name, filters, order])

    def _shaper(self, plan: ModelPlan, names: list[str]) -> Callable[[Sequence[Any]], dict[str, Any]]:
        """A function turning a result row into the agent's dict, masking and hashing as needed."""
        key = (plan.name, tuple(names))
        shaper = self._row_shapers.get(key)
        if shaper is not None:
            return shaper
        transforms = [
            (i, _mask(plan.fields[n].mask_show_last) if plan.fields[n].action is FieldAction.Mask else self._hmac)
            for i, n in enumerate(names)
            if plan.fields[n].action in (FieldAction.Mask, FieldAction.Hash)
        ]
        width = len(names)
        if not transforms:
            def shaper(row: Sequence[Any]) -> dict[str, Any]:
                return dict(zip(names, row))  # zip stops at the names: hidden key columns stay out
        else:
            def shaper(row: Sequence[Any]) -> dict[str, Any]:
                values = list(row[:width])
                for i, fn in transforms:
                    values[i] = fn(values[i])
                return dict(zip(names, values))
        if len(self._row_shapers) > 4096:
            self._row_shapers.clear()
        self._row_shapers[key] = shaper
        return shaper

    def _hmac(self, value: Any) -> str | None:
        if value is None:
            return None
        return hmac.new(self._hash_key, str(value).encode(), hashlib.sha256).hexdigest()[:32]

    async def _attach(
        self,
        ctx: RunContext,
        plan: ModelPlan,
        tree: dict[str, tuple[RelationInfo, dict[str, Any]]],
        rows: list[Any],
        out: list[dict[str, Any]],
        offset: int,
    ) -> None:
        """Fill included relationships into `out`, one statement per relationship and level.

        The related model's own policy applies: its scoping, row policies and field actions.
        """
        for rel_name, (rel, subtree) in tree.items():
            width = len(rel.pairs)
            parent_keys = [tuple(row[offset + i] for i in range(width)) for row in rows]
            offset += width
            target = self._plans[rel.target]
            twhere = target.where(ctx.principal)
            names = list(target.fields)
            remote = [target.columns[r] for _, r in rel.pairs]
            keys = {k for k in parent_keys if None not in k}
            found: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
            if keys:
                cols = [target.fields[n].column.label(n) for n in names]
                cols += [c.label(f"_r{i}") for i, c in enumerate(remote)]
                cols += _relation_key_columns(subtree)
                match = remote[0].in_([k[0] for k in keys]) if width == 1 else tuple_(*remote).in_(list(keys))
                stmt: Any = sql_select(*cols).select_from(target.selectable).where(*twhere.clauses, match)
                if rel.many:
                    ranked = stmt.add_columns(
                        func.row_number().over(partition_by=remote, order_by=target.pk_columns).label("_rn")
                    ).subquery()
                    stmt = sql_select(*(c for c in ranked.c if c.key != "_rn")).where(ranked.c._rn <= target.max_rows)
                related = await self._fetch(ctx, stmt)
                shape = self._shaper(target, names)
                shaped = [shape(r) for r in related]
                if subtree:
                    await self._attach(ctx, target, subtree, related, shaped, len(names) + width)
                for r, item in zip(related, shaped):
                    found.setdefault(tuple(r[len(names) + i] for i in range(width)), []).append(item)
            for item, key in zip(out, parent_keys):
                matches = found.get(key, [])
                item[rel_name] = matches if rel.many else (matches[0] if matches else None)

    def _describe(self, plan: ModelPlan) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for name, info in plan.fields.items():
            entry: dict[str, Any] = {
                **json_schema_for(info.pytype, info.column.type),
                "nullable": info.nullable,
            }
            if info.primary_key:
                entry["primary_key"] = True
            if info.action is not FieldAction.Allow:
                entry["returned_as"] = "masked" if info.action is FieldAction.Mask else "hashed"
            else:
                entry["filterable"] = True
                entry["sortable"] = info.comparable
            fields[name] = entry
        wp = plan.policy.write_policy
        writes = {
            op: action.value
            for op, action in (("create", wp.create), ("update", wp.update), ("delete", wp.delete),
                               ("bulk_update", wp.bulk_update))  # fmt: skip
            if action.value != "deny"
        }
        out: dict[str, Any] = {"fields": fields, "max_rows": plan.max_rows}
        if plan.policy.description:
            out["description"] = plan.policy.description
        if plan.relations:
            out["relationships"] = {
                n: {"model": r.target, "many": r.many} for n, r in plan.relations.items()
            }
        if writes:
            out["writes"] = writes
        return out

    def redact(self, plan: ModelPlan | None, inputs: dict[str, Any]) -> dict[str, Any]:
        """The inputs as they may be logged (see `ormai_agents._redact.redact_inputs`)."""
        return redact_inputs(plan, inputs, self.policy.redact_keys)


class _Call:
    """Times one toolset call and writes its audit record, whatever the outcome."""

    __slots__ = ("toolset", "ctx", "tool", "model", "inputs", "plan", "where", "row_count", "started", "before", "after")

    def __init__(self, toolset: Toolset, ctx: RunContext, tool: str, model: Any, inputs: dict[str, Any]) -> None:
        if not isinstance(ctx, RunContext):
            raise TypeError("the first argument must be a RunContext")
        self.toolset = toolset
        self.ctx = ctx
        self.tool = tool
        self.model = model
        self.inputs = inputs
        self.plan: ModelPlan | None = None
        self.where: Where | None = None
        self.row_count: int | None = None
        self.before: dict[str, Any] | None = None
        self.after: dict[str, Any] | None = None

    async def __aenter__(self) -> _Call:
        self.started = time.perf_counter()
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        error: OrmAIError | None = None
        if isinstance(exc, OrmAIError):
            error = exc
        elif exc is not None:
            if isinstance(exc, Exception):
                log.error("ormai_agents: unexpected error in %s", self.tool, exc_info=exc)
            # Cancellation and other BaseExceptions are recorded, then propagate unchanged.
            error = OrmAIError("The request could not be completed.")
        store = self.toolset.audit_store
        if store is not None or self.ctx.on_audit is not None:
            await self._audit(store, error)
        if isinstance(exc, Exception) and error is not exc:
            raise error from exc
        return False

    async def _audit(self, store: AuditStore | None, error: OrmAIError | None) -> None:
        principal = self.ctx.principal
        where = self.where
        model = self.model if isinstance(self.model, str) else None
        record = AuditRecord(
            tool_name=self.tool,
            model=model[:200] if model is not None else None,
            tenant_id=principal.tenant_id,
            user_id=principal.user_id,
            roles=list(principal.roles),
            inputs=self.toolset.redact(self.plan, self.inputs),
            scopes_injected=list(where.scopes) if where else [],
            policies_applied=list(where.policies) if where else [],
            bypass_used=where.bypass if where else False,
            outcome="success" if error is None else ("denied" if error.code in _DENIED_CODES else "error"),
            error_code=None if error is None else error.code,
            error_message=None if error is None else error.message,
            row_count=self.row_count,
            duration_ms=(time.perf_counter() - self.started) * 1000,
            before=self.before,
            after=self.after,
            request_id=self.ctx.request_id,
        )
        if store is not None:
            try:
                await deliver(store, record, durable=self.tool not in _READ_TOOLS)
            except Exception:
                # A read still answers; the failure is reported to the host's logs.
                log.exception("ormai_agents: could not store the audit record of a %s call", self.tool)
        sink = self.ctx.on_audit
        if sink is not None:
            try:
                pending = sink(record)
                if inspect.isawaitable(pending):
                    await pending
            except Exception:
                log.exception("ormai_agents: the on_audit callback failed for a %s call", self.tool)


def _aggregate_expr(plan: ModelPlan, function: Any, field: Any) -> Any:
    if function not in _inputs.AGGREGATE_FUNCTIONS:
        raise ValidationError(f"function must be one of: {', '.join(_inputs.AGGREGATE_FUNCTIONS)}")
    if field is None:
        if function != "count":
            raise ValidationError(f"{function} needs a field")
        return func.count()
    info = plan.fields.get(field) if isinstance(field, str) else None
    if info is None or not info.comparable:
        usable = plan.comparable_fields
        raise FieldNotAllowedError(
            f"That field can't be aggregated on {plan.name}. Fields you can aggregate: {', '.join(usable) or '(none)'}",
            details={"allowed_fields": usable},
        )
    if function in ("sum", "avg") and not is_numeric(info.pytype):
        numeric = [n for n in plan.comparable_fields if is_numeric(plan.fields[n].pytype)]
        raise ValidationError(f"{function} needs a numeric field. Numeric fields: {', '.join(numeric) or '(none)'}")
    return getattr(func, function)(info.column)


class _SortKey(NamedTuple):
    column: Any
    desc: bool
    nullable: bool
    coerce: Callable[[Any], Any]


def _order_clause(key: _SortKey) -> Any:
    clause = key.column.desc() if key.desc else key.column.asc()
    # NULLs sort last in both directions on every backend, so keyset pages agree with ORDER BY.
    return clause.nulls_last() if key.nullable else clause


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
            for k, v in zip(keys[:i], values[:i])
        ]
        value = values[i]
        if value is None:
            continue  # nothing sorts after NULL on this key except through later keys
        step = key.column < value if key.desc else key.column > value
        if key.nullable:
            step = or_(step, key.column.is_(None))
        branches.append(and_(*ties, step))
    return or_(*branches) if branches else false()


def _relation_key_columns(tree: dict[str, tuple[RelationInfo, dict[str, Any]]]) -> list[Any]:
    out = []
    for rel_name, (rel, _) in tree.items():
        out += [local.label(f"_j_{rel_name}_{i}") for i, (local, _) in enumerate(rel.pairs)]
    return out


def _mask(show_last: int) -> Callable[[Any], Any]:
    def mask(value: Any) -> Any:
        if value is None:
            return None
        text = str(value)
        tail = text[-show_last:] if show_last and len(text) > show_last * 2 else ""
        return "****" + tail

    return mask


def _jsonable(value: Any) -> Any:
    if hasattr(value, "value") and not isinstance(value, (int, float, str)):
        return value.value  # enums
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return str(value)


async def _execute(db: Any, stmt: Any) -> list[Any]:
    # Core statements go straight to the connection: no ORM compile step on the hot path.
    with map_db_errors("read"):
        if isinstance(db, AsyncSession):
            result = await (await db.connection()).execute(stmt)
        elif isinstance(db, Session):
            result = db.connection().execute(stmt)
        elif isinstance(db, AsyncConnection):
            result = await db.execute(stmt)
        else:
            result = db.execute(stmt)
        return result.all()  # type: ignore[no-any-return]


async def _rollback(db: Any) -> None:
    with map_db_errors("roll back"):
        if isinstance(db, (AsyncSession, AsyncConnection)):
            await db.rollback()
        else:
            db.rollback()


__all__ = ["Toolset"]
