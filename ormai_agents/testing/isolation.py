"""Tenant-isolation checks for your own models, in a few lines of a test.

```python
from ormai_agents.testing import assert_tenant_isolation

async def test_isolation(session):
    await assert_tenant_isolation(toolset, session, principals=[
        Principal(tenant_id="acme", user_id="u1"),
        Principal(tenant_id="globex", user_id="u2"),
    ])
```

For every model and principal it pages through `query` and checks each page against the
database (`no_cross_tenant_data`, `no_denied_fields`, `within_limits`); it tries to `get` rows
another principal saw (they must not be readable), and compares `aggregate` counts with the rows
seen. It fails when nobody saw any row, since such a test proves nothing: seed each tenant first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ormai_agents._context import Principal, RunContext
from ormai_agents.eval import EvalHarness, NoCrossTenantData, no_denied_fields, within_limits
from ormai_agents.policy import Policy
from ormai_agents.toolset import Toolset

__all__ = ["IsolationReport", "assert_tenant_isolation"]


def _label(p: Principal) -> str:
    return f"tenant={p.tenant_id!r} user={p.user_id!r}"


@dataclass(slots=True)
class IsolationReport:
    """What `assert_tenant_isolation` saw: rows per (principal, model), calls made, violations."""

    rows_seen: dict[tuple[str, str], int] = field(default_factory=dict)
    calls: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        seen = ", ".join(f"{who} {model}: {n}" for (who, model), n in sorted(self.rows_seen.items()))
        head = f"tenant isolation: {self.calls} calls, {len(self.violations)} violations; rows seen: {seen or 'none'}"
        shown = [f"  - {v}" for v in self.violations[:50]]
        if len(self.violations) > 50:
            shown.append(f"  ... and {len(self.violations) - 50} more violations")
        return "\n".join([head, *shown])


async def assert_tenant_isolation(
    toolset: Toolset,
    db: Any,
    principals: Sequence[Principal],
    models: Sequence[str] | None = None,
    *,
    policy: Policy | None = None,
    tenant_columns: Sequence[str] = ("tenant_id",),
    principal_path: str = "principal.tenant_id",
    max_pages: int = 20,
    probes: int = 5,
) -> IsolationReport:
    """Check that each principal sees only its own tenant's rows; raise AssertionError if not.

    `db` is a Session or AsyncSession on seeded data; `models` defaults to every model the
    toolset exposes; `policy` is the intended policy (default: the toolset's). Returns the
    report when isolation holds.
    """
    if len(principals) < 2:
        raise ValueError("give at least two principals, of different tenants")
    harness = EvalHarness(toolset, policy)
    checks = [NoCrossTenantData(tenant_columns, principal_path), no_denied_fields, within_limits]
    report = IsolationReport()
    names = list(models) if models is not None else toolset.model_names
    for model in names:
        plan = toolset.plan(model)
        pk_names = [info.name for info in plan.pk if info is not None and info.plain]
        keyed = len(pk_names) == len(plan.pk)
        run = _Run(harness, db, model, checks, report)
        seen = {p: await run.read_all(p, plan.max_rows, pk_names if keyed else None, max_pages) for p in principals}
        if keyed:
            for principal in principals:
                await run.probe_others(principal, pk_names, seen, probes)
    if not any(report.rows_seen.values()):
        report.violations.append("no principal saw any row: seed data for each tenant, or the test proves nothing")
    if report.violations:
        raise AssertionError(report.summary())
    return report


@dataclass
class _Run:
    """One model's isolation check: the calls made, their findings added to `report`."""

    harness: EvalHarness
    db: Any
    model: str
    checks: list[Any]
    report: IsolationReport

    async def read_all(
        self, principal: Principal, limit: int, pk_names: list[str] | None, max_pages: int
    ) -> set[tuple[Any, ...]]:
        """Page through every row the principal sees; the ids seen (when the key is readable).
        When the pages end, `aggregate count` must agree with the rows returned."""
        ctx = RunContext(principal, self.db)
        ids: set[tuple[Any, ...]] = set()
        count = 0
        cursor = None
        complete = False
        for _ in range(max_pages):
            kwargs: dict[str, Any] = {"model": self.model, "limit": limit}
            if cursor is not None:
                kwargs["cursor"] = cursor
            result = await self.harness.run(ctx, tool="query", kwargs=kwargs, invariants=self.checks)
            self.report.calls += 1
            self.report.violations += [f"{_label(principal)} query {self.model}: {v}" for v in result.violations]
            if result.error is not None:
                complete = True  # refused (e.g. no tenant): nothing seen, nothing to compare
                break
            rows = result.result.rows
            count += len(rows)
            if pk_names is not None:
                ids.update(tuple(r[n] for n in pk_names) for r in rows)
            cursor = result.result.next_cursor
            if cursor is None:
                complete = True
                break
        self.report.rows_seen[(_label(principal), self.model)] = count
        if complete and count:
            await self._count_agrees(ctx, count)
        return ids

    async def _count_agrees(self, ctx: RunContext, count: int) -> None:
        agg = await self.harness.run(ctx, tool="aggregate", kwargs={"model": self.model, "function": "count"})
        self.report.calls += 1
        value = getattr(agg.result, "value", None)
        if agg.error is None and value != count:
            self.report.violations.append(
                f"{_label(ctx.principal)} aggregate {self.model}: count is {value} but query returned {count} rows"
            )

    async def probe_others(
        self, principal: Principal, pk_names: list[str], seen: dict[Principal, set[tuple[Any, ...]]], probes: int
    ) -> None:
        """`get` a few rows only other principals saw: each must be not found."""
        ctx = RunContext(principal, self.db)
        others = set().union(*(ids for p, ids in seen.items() if p != principal)) - seen[principal]
        for key in sorted(others, key=repr)[:probes]:
            ident: Any = key[0] if len(key) == 1 else dict(zip(pk_names, key, strict=False))
            kwargs = {"model": self.model, "id": ident}
            got = await self.harness.run(ctx, tool="get", kwargs=kwargs, invariants=self.checks)
            self.report.calls += 1
            if got.error is None:
                self.report.violations.append(
                    f"{_label(principal)} get {self.model} id={ident!r}: read a row only another principal sees"
                )
            self.report.violations += [f"{_label(principal)} get {self.model}: {v}" for v in got.violations]
