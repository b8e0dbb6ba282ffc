"""The eval harness: run toolset calls and check invariants on what came back.

```python
harness = EvalHarness(toolset, policy)
result = await harness.run(ctx, tool="query", kwargs={"model": "Order"}, invariants=[no_cross_tenant_data])
result.passed, result.violations, result.result
```

Invariants judge a call against the database and the policy you *meant* (the `policy` given to
the harness), not against the toolset's own reasoning: `no_cross_tenant_data` re-reads every
returned row by primary key with plain SQLAlchemy, ignoring every policy, and checks its tenant
columns. So it holds even when the agent did not select the tenant column, and it catches a
toolset whose policy forgot the scoping.

`Recorder` captures calls (principal, inputs, outcome, returned ids) as JSON lines and `replay`
runs them again, optionally as another principal or under another policy, and reports what
changed: the regression test for a policy change.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import and_, select, tuple_

from ormai_agents._call import DENIED_CODES
from ormai_agents._context import Principal, RunContext
from ormai_agents._db import DbHandle
from ormai_agents._errors import OrmAIError
from ormai_agents._operations import OPERATIONS, WRITE_OPERATIONS
from ormai_agents._paths import parse_principal_path
from ormai_agents._plan import ModelPlan
from ormai_agents._results import AggregateResult, GetResult, QueryResult, SchemaResult, WriteResult
from ormai_agents._storable import clean, escape_line
from ormai_agents.policy import FieldAction, Policy
from ormai_agents.toolset import Toolset

log = logging.getLogger("ormai_agents")

__all__ = [
    "EvalCase",
    "EvalHarness",
    "EvalResult",
    "Invariant",
    "NoCrossTenantData",
    "NoDeniedFields",
    "Observation",
    "RecordedCall",
    "Recorder",
    "RecordingToolset",
    "ReplayDifference",
    "ReplayReport",
    "SuiteResult",
    "Violation",
    "WithinLimits",
    "load_recording",
    "no_cross_tenant_data",
    "no_denied_fields",
    "read_recording",
    "replay",
    "within_limits",
]

TOOLS: tuple[str, ...] = tuple(OPERATIONS)
WRITE_TOOLS = frozenset(WRITE_OPERATIONS)
Outcome = Literal["success", "denied", "error"]


def outcome_of(error: BaseException | None) -> Outcome:
    """How the audit log classifies a call that raised `error` (None: success)."""
    if error is None:
        return "success"
    if isinstance(error, OrmAIError) and error.code in DENIED_CODES:
        return "denied"
    return "error"


def error_code_of(error: BaseException | None) -> str | None:
    if error is None:
        return None
    return error.code if isinstance(error, OrmAIError) else type(error).__name__


def returned_rows(result: Any) -> list[dict[str, Any]]:
    """The rows a tool result carries (query rows, the got or written row)."""
    if isinstance(result, QueryResult):
        return list(result.rows)
    if isinstance(result, GetResult):
        return [result.data]
    if isinstance(result, WriteResult):
        data = result.data
        return [] if set(data) == {"updated_count"} else [data]
    return []


def row_count_of(result: Any) -> int | None:
    if isinstance(result, QueryResult):
        return len(result.rows)
    if isinstance(result, GetResult):
        return 1
    if isinstance(result, WriteResult):
        count = result.data.get("updated_count")
        return count if isinstance(count, int) and set(result.data) == {"updated_count"} else 1
    if isinstance(result, AggregateResult):
        return len(result.groups) if result.groups is not None else 1
    if isinstance(result, SchemaResult):
        return len(result.models)
    return None


# --- results and invariants ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant or expectation."""

    invariant: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.invariant}: {self.message}"


@dataclass(slots=True)
class Observation:
    """One call as invariants see it: who called what, and what came back or was raised."""

    harness: EvalHarness
    ctx: RunContext
    tool: str
    kwargs: dict[str, Any]
    result: Any = None
    error: BaseException | None = None

    @property
    def principal(self) -> Principal:
        return self.ctx.principal

    @property
    def model(self) -> str | None:
        model = self.kwargs.get("model")
        return model if isinstance(model, str) else None

    @property
    def rows(self) -> list[dict[str, Any]]:
        return returned_rows(self.result)


class Invariant:
    """A property every call must keep. Subclass and implement `check`.

    `check` returns the violations it found: `Violation`s, plain strings, or nothing. A plain
    function `fn(observation)` (sync or async) with the same contract also works as an invariant.
    """

    name: str = "invariant"

    async def check(self, obs: Observation) -> Iterable[Violation | str] | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class _FunctionInvariant(Invariant):
    def __init__(self, fn: Callable[[Observation], Any]) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", "invariant")

    async def check(self, obs: Observation) -> Any:
        out = self.fn(obs)
        return await out if inspect.isawaitable(out) else out


def _as_invariant(inv: Any) -> Invariant:
    if isinstance(inv, Invariant):
        return inv
    if isinstance(inv, type) and issubclass(inv, Invariant):
        return inv()
    if callable(inv):
        return _FunctionInvariant(inv)
    raise TypeError(f"not an invariant: {inv!r}")


@dataclass(slots=True)
class EvalResult:
    """What `EvalHarness.run` found. `passed` is False on any violation or unmet expectation."""

    tool: str
    kwargs: dict[str, Any]
    principal: Principal
    result: Any
    error: BaseException | None
    violations: list[Violation]
    duration_ms: float
    name: str | None = None

    @property
    def passed(self) -> bool:
        return not self.violations

    @property
    def outcome(self) -> Outcome:
        return outcome_of(self.error)

    @property
    def error_code(self) -> str | None:
        return error_code_of(self.error)

    @property
    def row_count(self) -> int | None:
        return row_count_of(self.result)

    def __str__(self) -> str:
        label = self.name or f"{self.tool} {self.kwargs.get('model', '')}".strip()
        status = "passed" if self.passed else "FAILED"
        lines = [f"{label}: {status} ({self.outcome}{', ' + self.error_code if self.error_code else ''})"]
        lines += [f"  - {v}" for v in self.violations]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class EvalCase:
    """One call of a suite, with the outcome it should have.

    `expect` is "success", "denied" or "error" (None: any); `error_code` and `row_count`, when
    given, must match too.
    """

    name: str
    principal: Principal
    tool: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    expect: Outcome | None = "success"
    error_code: str | None = None
    row_count: int | None = None
    invariants: Sequence[Any] = ()


@dataclass(slots=True)
class SuiteResult:
    """The results of `run_suite`, in case order."""

    results: list[EvalResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[EvalResult]:
        return [r for r in self.results if not r.passed]

    def summary(self) -> str:
        head = f"{len(self.results) - len(self.failures)}/{len(self.results)} cases passed"
        return "\n".join([head, *(str(r) for r in self.failures)])


class EvalHarness:
    """Runs toolset calls and checks invariants and expected outcomes on them.

    `policy` is the policy the calls are judged against (usually the toolset's own; pass the
    intended policy to test a toolset built from another one). A `recorder` captures every call.
    """

    def __init__(self, toolset: Toolset, policy: Policy | None = None, *, recorder: Recorder | None = None) -> None:
        if not isinstance(toolset, Toolset):
            raise TypeError("toolset must be an ormai_agents.Toolset")
        self.toolset = toolset
        self.policy = policy if policy is not None else toolset.policy
        if not isinstance(self.policy, Policy):
            raise TypeError("policy must be an ormai_agents.policy.Policy")
        self.recorder = recorder

    async def run(
        self,
        ctx: RunContext,
        tool: str,
        kwargs: Mapping[str, Any] | None = None,
        invariants: Sequence[Any] = (),
        *,
        expect: Outcome | None = None,
        error_code: str | None = None,
        row_count: int | None = None,
        name: str | None = None,
    ) -> EvalResult:
        """Call `tool` with `kwargs` as `ctx.principal`; check `invariants` and expectations.

        Errors the call raises are captured in `.error`, never propagated; an invariant that
        raises counts as a violation of that invariant.
        """
        if tool not in TOOLS:
            raise ValueError(f"tool must be one of: {', '.join(TOOLS)}")
        if expect not in (None, "success", "denied", "error"):
            raise ValueError('expect must be "success", "denied", "error" or None')
        checks = [_as_invariant(i) for i in invariants]
        args = dict(kwargs or {})
        method = getattr(self.toolset, tool)
        started = time.perf_counter()
        result: Any = None
        error: BaseException | None = None
        try:
            result = await method(ctx, **args)
        except Exception as exc:  # noqa: BLE001 - the harness reports every failure
            error = exc
        duration = (time.perf_counter() - started) * 1000
        obs = Observation(self, ctx, tool, args, result, error)
        violations: list[Violation] = []
        for inv in checks:
            try:
                found = await inv.check(obs)
            except Exception as exc:  # noqa: BLE001
                found = [f"the invariant could not be checked: {type(exc).__name__}: {exc}"]
            for v in found or ():
                violations.append(v if isinstance(v, Violation) else Violation(inv.name, str(v)))
        violations += _expectations(obs, expect, error_code, row_count)
        if self.recorder is not None:
            await self.recorder.record(self.toolset, ctx.principal, tool, args, result, error)
        return EvalResult(tool, args, ctx.principal, result, error, violations, duration, name)

    async def run_suite(
        self,
        cases: Iterable[EvalCase],
        *,
        db: Any,
        invariants: Sequence[Any] = (),
    ) -> SuiteResult:
        """Run every case on `db` (a Session or AsyncSession), each with the suite-wide
        `invariants` plus its own; returns every result (failures don't stop the suite)."""
        results = []
        for case in cases:
            ctx = RunContext(case.principal, db)
            results.append(
                await self.run(
                    ctx,
                    case.tool,
                    case.kwargs,
                    [*invariants, *case.invariants],
                    expect=case.expect,
                    error_code=case.error_code,
                    row_count=case.row_count,
                    name=case.name,
                )
            )
        return SuiteResult(results)


def _expectations(obs: Observation, expect: Any, error_code: Any, row_count: Any) -> list[Violation]:
    out = []
    outcome = outcome_of(obs.error)
    code = error_code_of(obs.error)
    if expect is not None and outcome != expect:
        out.append(Violation("expect", f"expected {expect}, got {outcome}" + (f" ({code})" if code else "")))
    if error_code is not None and code != error_code:
        out.append(Violation("expect", f"expected error {error_code}, got {code or 'no error'}"))
    if row_count is not None:
        got = row_count_of(obs.result)
        if got != row_count:
            out.append(Violation("expect", f"expected {row_count} rows, got {got}"))
    return out


# --- built-in invariants ------------------------------------------------------------------


def _model_plan(obs: Observation, model: str) -> ModelPlan | None:
    try:
        return obs.harness.toolset.plan(model)
    except OrmAIError:
        return None


def _relation_rows(plan: ModelPlan, rows: list[dict[str, Any]]) -> Iterable[tuple[str, list[dict[str, Any]]]]:
    """(target model, nested rows) for each relationship included in `rows`."""
    for rel_name, rel in plan.relations.items():
        nested: list[dict[str, Any]] = []
        for row in rows:
            value = row.get(rel_name)
            if isinstance(value, dict):
                nested.append(value)
            elif isinstance(value, list):
                nested += [v for v in value if isinstance(v, dict)]
        if nested:
            yield rel.target, nested


# (tenant column, the values the principal may see in it)
_Scope = list[tuple[str, list[Any]]]


def _same(db_value: Any, allowed: list[Any]) -> bool:
    return db_value is not None and str(db_value) in {str(v) for v in allowed}


class NoCrossTenantData(Invariant):
    """Every returned row (and every included row) belongs to the principal's tenant.

    The rows are read again from the database by primary key (or, when the agent did not select
    the key, by their plain values) with plain SQLAlchemy, ignoring the policy, and their tenant
    columns are compared with the principal. Tenant columns of a model are its scoping in the
    harness policy plus any of `tenant_columns` the model has (compared with
    `principal_path`), so a policy that forgot to scope a model is caught.

    Rows visible through a permit or bypass row policy count as cross-tenant: use this invariant
    for principals that should see only their own tenant. A row that can't be identified (no key
    and no plain value returned) is reported rather than assumed safe.
    """

    name = "no_cross_tenant_data"

    def __init__(
        self, tenant_columns: Sequence[str] = ("tenant_id",), principal_path: str = "principal.tenant_id"
    ) -> None:
        self.tenant_columns = tuple(tenant_columns)
        self.principal_path = principal_path
        self._path = parse_principal_path(principal_path)

    def _scope(self, obs: Observation, model: str, plan: ModelPlan) -> _Scope:
        wanted: dict[str, tuple[str, ...]] = {}
        mp = obs.harness.policy.models.get(model)
        if mp is not None:
            for column, path in mp.scoping.items():
                wanted[column] = parse_principal_path(path)
        for column in self.tenant_columns:
            if column in plan.columns:
                wanted.setdefault(column, self._path)
        out = []
        for column, parts in wanted.items():
            value = obs.principal.resolve(parts)
            if isinstance(value, (list, tuple, set, frozenset)):
                allowed = list(value)
            else:
                allowed = [] if value is None else [value]
            out.append((column, allowed))
        return out

    async def check(self, obs: Observation) -> list[Violation]:
        if obs.error is not None or obs.tool == "delete" or obs.model is None:
            return []
        return await self._check(obs, obs.model, obs.rows, 0)

    async def _check(self, obs: Observation, model: str, rows: list[dict[str, Any]], depth: int) -> list[Violation]:
        plan = _model_plan(obs, model)
        if plan is None or not rows or depth > 8:
            return []
        out: list[Violation] = []
        scope = self._scope(obs, model, plan)
        if scope:
            out += await self._check_rows(obs, model, plan, rows, scope)
        for target, nested in _relation_rows(plan, rows):
            out += await self._check(obs, target, nested, depth + 1)
        return out

    async def _check_rows(
        self, obs: Observation, model: str, plan: ModelPlan, rows: list[dict[str, Any]], scope: _Scope
    ) -> list[Violation]:
        names = [info.name for info in plan.pk if info is not None and info.plain]
        identified = plan.keyed  # every key column is a plain field
        keyed = [r for r in rows if identified and all(n in r for n in names)]
        unkeyed = [r for r in rows if not (identified and all(n in r for n in names))]
        out: list[Violation] = []
        if keyed:
            out += await self._check_keyed(obs, model, plan, [tuple(r[n] for n in names) for r in keyed], scope)
        for row in unkeyed:
            out += await self._check_unkeyed(obs, model, plan, row, scope)
        return out

    async def _check_keyed(
        self, obs: Observation, model: str, plan: ModelPlan, keys: list[tuple[Any, ...]], scope: _Scope
    ) -> list[Violation]:
        """Rows returned with their key: each is looked up by key and its tenant columns compared."""
        columns = [plan.columns[c] for c, _ in scope]
        pk_cols = plan.pk_columns
        found: dict[tuple[Any, ...], Sequence[Any]] = {}
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            cond = pk_cols[0].in_([k[0] for k in part]) if len(pk_cols) == 1 else tuple_(*pk_cols).in_(part)
            stmt = select(*pk_cols, *columns).select_from(plan.selectable).where(cond)
            for db_row in await DbHandle(obs.ctx.db).fetch(stmt):
                found[tuple(db_row[: len(pk_cols)])] = db_row[len(pk_cols) :]
        out: list[Violation] = []
        for key in keys:
            db_values = found.get(key)
            if db_values is None:
                out.append(Violation(self.name, f"{model} {_show_key(key)} was returned but is not in the database"))
                continue
            bad = _foreign(scope, db_values)
            if bad:
                out.append(
                    Violation(
                        self.name,
                        f"{model} {_show_key(key)} belongs to another tenant ({', '.join(bad)})",
                        {"model": model, "id": list(key)},
                    )
                )
        return out

    async def _check_unkeyed(
        self, obs: Observation, model: str, plan: ModelPlan, row: dict[str, Any], scope: _Scope
    ) -> list[Violation]:
        """A row returned without its key: the rows that match its plain values must include one of
        the principal's."""
        columns = [plan.columns[c] for c, _ in scope]
        conds = []
        for name, value in row.items():
            info = plan.fields.get(name)
            if info is None or not info.plain or isinstance(value, (dict, list)):
                continue
            conds.append(info.column.is_(None) if value is None else info.column == value)
        if not any(True for n, v in row.items() if v is not None and n in plan.fields and plan.fields[n].plain):
            return [Violation(self.name, f"a returned {model} row can't be checked: it carries no key or plain value")]
        stmt = select(*columns).select_from(plan.selectable).where(and_(*conds)).limit(1000)
        candidates = await DbHandle(obs.ctx.db).fetch(stmt)
        if not candidates:
            return [Violation(self.name, f"a returned {model} row matches no row in the database")]
        if all(_foreign(scope, c) for c in candidates):
            bad = ", ".join(_foreign(scope, candidates[0]))
            return [Violation(self.name, f"a returned {model} row matches only rows of another tenant ({bad})")]
        return []


def _foreign(scope: _Scope, values: Sequence[Any]) -> list[str]:
    """`column=value` for each tenant column whose value the principal may not see."""
    return [f"{c}={v!r}" for (c, allowed), v in zip(scope, values, strict=False) if not _same(v, allowed)]


def _show_key(key: Sequence[Any]) -> str:
    return f"id={key[0]!r}" if len(key) == 1 else f"id={list(key)!r}"


def _field_actions(policy: Policy, model: str, plan: ModelPlan) -> dict[str, FieldAction]:
    mp = policy.models.get(model)
    if mp is None or not mp.allowed:
        return dict.fromkeys(plan.columns, FieldAction.Deny)
    return {
        name: (mp.fields[name].action if name in mp.fields else mp.default_field_action) for name in plan.columns
    }


class NoDeniedFields(Invariant):
    """No returned row (or included row) carries a field the harness policy denies, or any key
    that is neither a field nor an included relationship; no error names a denied field."""

    name = "no_denied_fields"

    async def check(self, obs: Observation) -> list[Violation]:
        if obs.model is None:
            return []
        plan = _model_plan(obs, obs.model)
        if plan is None:
            return []
        if obs.error is not None:
            actions = _field_actions(obs.harness.policy, obs.model, plan)
            text = str(obs.error) + " " + json.dumps(getattr(obs.error, "details", {}), default=str)
            named = [n for n, a in actions.items() if a is FieldAction.Deny and re.search(rf"\b{re.escape(n)}\b", text)]
            return [Violation(self.name, f"the error names denied field {n!r}") for n in named]
        return self._rows(obs, obs.model, plan, obs.rows, 0)

    def _rows(
        self, obs: Observation, model: str, plan: ModelPlan, rows: list[dict[str, Any]], depth: int
    ) -> list[Violation]:
        if depth > 8:
            return []
        actions = _field_actions(obs.harness.policy, model, plan)
        out: list[Violation] = []
        seen: set[str] = set()
        for row in rows:
            for key in row:
                if key in seen or key in plan.relations:
                    continue
                seen.add(key)
                action = actions.get(key)
                if action is FieldAction.Deny:
                    out.append(Violation(self.name, f"{model} rows carry denied field {key!r}"))
                elif action is None:
                    out.append(Violation(self.name, f"{model} rows carry unknown key {key!r}"))
        for target, nested in _relation_rows(plan, rows):
            target_plan = _model_plan(obs, target)
            if target_plan is not None:
                out += self._rows(obs, target, target_plan, nested, depth + 1)
        return out


class WithinLimits(Invariant):
    """Row counts stay within the harness policy: `max_rows` per query and per included list,
    the requested `limit`, the include depth, and `max_affected_rows` for bulk updates."""

    name = "within_limits"

    async def check(self, obs: Observation) -> list[Violation]:
        if obs.error is not None or obs.model is None:
            return []
        policy = obs.harness.policy
        out: list[Violation] = []
        if obs.tool == "bulk_update" and isinstance(obs.result, WriteResult):
            mp = policy.models.get(obs.model)
            count = obs.result.data.get("updated_count")
            if mp is not None and isinstance(count, int) and count > mp.write_policy.max_affected_rows:
                most = mp.write_policy.max_affected_rows
                out.append(Violation(self.name, f"bulk_update changed {count} rows, more than {most}"))
            return out
        rows = obs.rows
        limit = obs.kwargs.get("limit")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 and len(rows) > limit:
            out.append(Violation(self.name, f"{len(rows)} rows returned for limit {limit}"))
        out += self._rows(obs, obs.model, rows, 0)
        return out

    def _max_rows(self, policy: Policy, model: str) -> int:
        mp = policy.models.get(model)
        return (mp.max_rows if mp is not None and mp.max_rows else None) or policy.max_rows

    def _rows(self, obs: Observation, model: str, rows: list[dict[str, Any]], depth: int) -> list[Violation]:
        policy = obs.harness.policy
        out: list[Violation] = []
        if len(rows) > self._max_rows(policy, model) and depth == 0:
            most = self._max_rows(policy, model)
            out.append(Violation(self.name, f"{len(rows)} {model} rows returned, more than max_rows {most}"))
        plan = _model_plan(obs, model)
        if plan is None:
            return out
        for rel_name, rel in plan.relations.items():
            nested: list[dict[str, Any]] = []
            for row in rows:
                value = row.get(rel_name)
                if value is None:
                    continue
                if depth + 1 > policy.max_include_depth:
                    deepest = policy.max_include_depth
                    why = f"{model}.{rel_name} is included deeper than max_include_depth {deepest}"
                    out.append(Violation(self.name, why))
                    return out
                items = value if isinstance(value, list) else [value]
                if rel.many and len(items) > self._max_rows(policy, rel.target):
                    why = f"{len(items)} {rel.target} rows included in one {model}, more than max_rows"
                    out.append(Violation(self.name, why))
                nested += [i for i in items if isinstance(i, dict)]
            if nested:
                out += self._rows(obs, rel.target, nested, depth + 1)
        return out


no_cross_tenant_data = NoCrossTenantData()
no_denied_fields = NoDeniedFields()
within_limits = WithinLimits()


# --- recording and replay -----------------------------------------------------------------


def _ids(toolset: Toolset, model: Any, rows: list[dict[str, Any]]) -> list[list[Any]] | None:
    """The primary keys of returned rows, or None when they were not all returned."""
    if not isinstance(model, str):
        return None
    try:
        plan = toolset.plan(model)
    except OrmAIError:
        return None
    names = [info.name for info in plan.pk if info is not None and info.plain]
    if len(names) != len(plan.pk) or not all(all(n in r for n in names) for r in rows):
        return None
    return [json.loads(json.dumps([r[n] for n in names], default=str)) for r in rows]


def _digest(result: Any) -> str | None:
    """A fingerprint of what a call returned, for calls whose rows can't be compared by id."""
    if isinstance(result, (AggregateResult, SchemaResult)):
        canon = [json.dumps(result.to_dict(), default=str, sort_keys=True)]
    else:
        rows = returned_rows(result)
        if not rows:
            return None
        canon = sorted(json.dumps(r, default=str, sort_keys=True) for r in rows)
    return hashlib.sha256("\n".join(canon).encode()).hexdigest()[:32]


@dataclass(slots=True)
class RecordedCall:
    """One captured tool call."""

    tool: str
    principal: dict[str, Any]
    kwargs: dict[str, Any]
    outcome: Outcome
    error_code: str | None = None
    row_count: int | None = None
    ids: list[list[Any]] | None = None
    rows_digest: str | None = None
    timestamp: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "timestamp": self.timestamp,
            "tool": self.tool,
            "principal": self.principal,
            "kwargs": self.kwargs,
            "outcome": self.outcome,
            "error_code": self.error_code,
            "row_count": self.row_count,
            "ids": self.ids,
            "rows_digest": self.rows_digest,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecordedCall:
        """The call `to_dict` produced; ValueError when `data` is not one."""
        if not isinstance(data, Mapping) or not all(isinstance(data.get(k), str) for k in ("tool", "outcome")):
            raise ValueError("not a recorded call")
        if not isinstance(data.get("principal"), Mapping) or not isinstance(data.get("kwargs") or {}, Mapping):
            raise ValueError("not a recorded call")
        return cls(
            tool=data["tool"],
            principal=dict(data["principal"]),
            kwargs=dict(data.get("kwargs") or {}),
            outcome=data["outcome"],
            error_code=data.get("error_code"),
            row_count=data.get("row_count"),
            ids=data.get("ids"),
            rows_digest=data.get("rows_digest"),
            timestamp=data.get("timestamp", ""),
        )

    def principal_obj(self) -> Principal:
        p = self.principal
        return Principal(
            tenant_id=p.get("tenant_id"),
            user_id=p.get("user_id"),
            roles=tuple(p.get("roles") or ()),
            metadata=p.get("metadata") or {},
        )


def _observe(
    toolset: Toolset,
    principal: Principal,
    tool: str,
    kwargs: Mapping[str, Any],
    result: Any,
    error: BaseException | None,
    *,
    redact: bool,
) -> RecordedCall:
    model = kwargs.get("model")
    rows = returned_rows(result)
    stored_kwargs = dict(kwargs)
    if redact:
        plan = None
        if isinstance(model, str):
            try:
                plan = toolset.plan(model)
            except OrmAIError:
                plan = None
        inputs = {k: v for k, v in kwargs.items() if k != "model"}
        redacted = toolset.redact(plan, inputs)
        stored_kwargs = {"model": model, **redacted} if "model" in kwargs else redacted
    has_rows = isinstance(result, (QueryResult, GetResult)) or (isinstance(result, WriteResult) and bool(rows))
    ids = _ids(toolset, model, rows) if error is None and has_rows else None
    return RecordedCall(
        tool=tool,
        principal=principal.to_dict(),
        kwargs=json.loads(json.dumps(stored_kwargs, default=str)),
        outcome=outcome_of(error),
        error_code=error_code_of(error),
        row_count=row_count_of(result) if error is None else None,
        ids=ids,
        rows_digest=_digest(result) if error is None and ids is None else None,
        timestamp=datetime.now(timezone.utc).isoformat(),
    )


class Recorder:
    """Captures tool calls to a JSON-lines file: principal, inputs, outcome, returned ids.

    With `redact=True` (the default) inputs are stored as the audit log stores them: values on
    fields the policy doesn't plainly allow, and under secret-looking keys, are replaced. Calls
    on such fields are refused anyway, so replays keep their outcome. `redact=False` stores the
    raw inputs: treat that file as sensitive.
    """

    def __init__(self, path: str | Path, *, redact: bool = True) -> None:
        self.path = Path(path)
        self.redact = redact

    async def record(
        self,
        toolset: Toolset,
        principal: Principal,
        tool: str,
        kwargs: Mapping[str, Any],
        result: Any,
        error: BaseException | None,
    ) -> RecordedCall:
        call = _observe(toolset, principal, tool, kwargs, result, error, redact=self.redact)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as fh:  # one small append per call
            fh.write(_line(call.to_dict()))
        return call

    def wrap(self, toolset: Toolset) -> RecordingToolset:
        """A toolset that records every call it runs."""
        return RecordingToolset(toolset, self)

    def load(self) -> list[RecordedCall]:
        return load_recording(self.path)


def _line(data: dict[str, Any]) -> bytes:
    """One JSON line, whatever the values hold (see `ormai_agents._storable`)."""
    try:
        text = json.dumps(data, default=str, ensure_ascii=False, allow_nan=False)
        return (escape_line(text) + "\n").encode("utf-8")
    except (ValueError, TypeError, RecursionError):
        text = json.dumps(clean(data), default=str, ensure_ascii=False, allow_nan=False)
        return (escape_line(text) + "\n").encode("utf-8")


def load_recording(path: str | Path) -> list[RecordedCall]:
    """The calls of a recording, in order. Unreadable lines are skipped and logged (see
    `read_recording` for their count)."""
    return read_recording(path)[0]


def read_recording(path: str | Path) -> tuple[list[RecordedCall], int]:
    """The calls of a recording, in order, and how many unreadable lines were skipped.

    Lines end with "\n" only (the recorder escapes every other line break inside values); a
    line that is not a recorded call (torn, edited) is skipped, never fatal."""
    out = []
    skipped = 0
    for line in Path(path).read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            out.append(RecordedCall.from_dict(json.loads(line.decode("utf-8"))))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            skipped += 1
    if skipped:
        log.warning("ormai_agents: skipped %d unreadable line(s) in the recording %s", skipped, path)
    return out, skipped


class RecordingToolset:
    """Wraps a `Toolset` and records every tool call; everything else is passed through."""

    def __init__(self, toolset: Toolset, recorder: Recorder) -> None:
        self.toolset = toolset
        self.recorder = recorder

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.toolset, name)
        if name not in TOOLS:
            return target

        async def call(ctx: RunContext, **kwargs: Any) -> Any:
            try:
                result = await target(ctx, **kwargs)
            except Exception as exc:
                await self.recorder.record(self.toolset, ctx.principal, name, kwargs, None, exc)
                raise
            await self.recorder.record(self.toolset, ctx.principal, name, kwargs, result, None)
            return result

        return call


@dataclass(frozen=True, slots=True)
class ReplayDifference:
    """How a replayed call differs from its recording.

    `kind`: "allowed→denied" (succeeded, now fails), "denied→allowed" (failed, now succeeds),
    "outcome_changed" (failed then and now, with another error), "rows_changed".
    """

    index: int
    tool: str
    model: str | None
    kind: str
    before: str
    after: str
    added_ids: list[list[Any]] = field(default_factory=list)
    removed_ids: list[list[Any]] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"#{self.index} {self.tool} {self.model or ''}: {self.kind} ({self.before} → {self.after})"
        if self.added_ids or self.removed_ids:
            text += f", +{len(self.added_ids)} -{len(self.removed_ids)} rows"
        return text


@dataclass(slots=True)
class ReplayReport:
    """The outcome of `replay`: how many calls ran, were skipped, and what changed."""

    replayed: int
    skipped: int
    differences: list[ReplayDifference]
    unreadable: int = 0  # lines of the recording file that were not a recorded call

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        head = f"{self.replayed} calls replayed, {self.skipped} skipped, {len(self.differences)} differences"
        if self.unreadable:
            head += f", {self.unreadable} unreadable lines skipped"
        return "\n".join([head, *(f"  {d}" for d in self.differences)])


def _label(outcome: str, code: str | None) -> str:
    return "allowed" if outcome == "success" else f"{outcome} ({code})"


async def replay(
    calls: str | Path | Iterable[RecordedCall],
    toolset: Toolset | RecordingToolset,
    db: Any,
    *,
    as_principal: Principal | Callable[[Principal], Principal] | None = None,
    include_writes: bool = False,
) -> ReplayReport:
    """Run recorded calls again on `db` and report what changed.

    `toolset` may be built from another policy (the change under test). `as_principal` replays
    every call as that principal, or as `as_principal(original)`. Writes are skipped unless
    `include_writes` (they would change `db`). Pagination cursors are not replayed: a call that
    used one is replayed as its first page.
    """
    unreadable = 0
    if isinstance(calls, (str, Path)):
        calls, unreadable = read_recording(calls)
    differences: list[ReplayDifference] = []
    replayed = skipped = 0
    for index, call in enumerate(calls):
        if call.tool not in TOOLS or (call.tool in WRITE_TOOLS and not include_writes):
            skipped += 1
            continue
        original = call.principal_obj()
        principal = _replay_as(as_principal, original)
        kwargs = {k: v for k, v in call.kwargs.items() if k != "cursor"}
        method: Callable[..., Awaitable[Any]] = getattr(toolset, call.tool)
        result: Any = None
        error: BaseException | None = None
        try:
            result = await method(RunContext(principal, db), **kwargs)
        except Exception as exc:  # noqa: BLE001 - every outcome is compared
            error = exc
        replayed += 1
        inner = toolset.toolset if isinstance(toolset, RecordingToolset) else toolset
        now = _observe(inner, principal, call.tool, kwargs, result, error, redact=False)
        model = kwargs.get("model") if isinstance(kwargs.get("model"), str) else None
        difference = _difference(index, call, now, model)
        if difference is not None:
            differences.append(difference)
    return ReplayReport(replayed, skipped, differences, unreadable)


def _replay_as(as_principal: Principal | Callable[[Principal], Principal] | None, original: Principal) -> Principal:
    if as_principal is None:
        return original
    if isinstance(as_principal, Principal):
        return as_principal
    return as_principal(original)


def _difference(index: int, call: RecordedCall, now: Any, model: str | None) -> ReplayDifference | None:
    """How the replayed call `now` differs from the recorded `call`, if it does."""
    before, after = _label(call.outcome, call.error_code), _label(now.outcome, now.error_code)
    if (call.outcome == "success") != (now.outcome == "success"):
        kind = "allowed→denied" if call.outcome == "success" else "denied→allowed"
        return ReplayDifference(index, call.tool, model, kind, before, after)
    if call.outcome != "success":
        if (call.outcome, call.error_code) != (now.outcome, now.error_code):
            return ReplayDifference(index, call.tool, model, "outcome_changed", before, after)
        return None
    if call.ids is not None and now.ids is not None:
        old = {json.dumps(i, sort_keys=True) for i in call.ids}
        new = {json.dumps(i, sort_keys=True) for i in now.ids}
        if old == new:
            return None
        return ReplayDifference(
            index, call.tool, model, "rows_changed", f"{len(old)} rows", f"{len(new)} rows",
            added_ids=[json.loads(i) for i in sorted(new - old)],
            removed_ids=[json.loads(i) for i in sorted(old - new)],
        )  # fmt: skip
    if (call.rows_digest, call.row_count) != (now.rows_digest, now.row_count):
        was, now_rows = f"{call.row_count} rows", f"{now.row_count} rows"
        return ReplayDifference(index, call.tool, model, "rows_changed", was, now_rows)
    return None

