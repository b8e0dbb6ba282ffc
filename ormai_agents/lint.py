"""Check a policy against a live database: the mistakes that make a policy leak or do nothing.

`lint_policy(policy, bind, models=None)` returns a list of `Finding`s (empty when clean). It
reflects the database with SQLAlchemy's `inspect` and reports:

- `unknown-model`: a policy model with no mapped class or no table in the database.
- `unknown-field`: fields, scoping, row-policy columns or write options naming no column.
- `bad-condition`: a row-policy condition that does not parse.
- `unscoped-tenant-column`: an allowed model whose table has a tenant-like column (`tenant_id`,
  `org_id`, `organization_id`, `account_id`, `workspace_id`, ...) but no scoping and no restrict
  row policy tying that column to the principal: every tenant's rows are visible.
- `unindexed-scope-column`: a scoping column that leads no index: every call scans the table.
- `restrict-grants-nothing`: a restrict row policy (the default mode) that compares a scoping
  column with a principal value. Restrict conditions are ANDed with the scoping, so it can only
  narrow the rows, never add any: usually a policy meant to grant more (`mode: permit`).
- `create-without-auto-set`: creates are allowed but a scoping or tenant-like column is not
  auto-set, so the agent must send the tenant itself.
- `scope-column-writable`: updates are allowed and a scoping column is neither immutable nor
  auto-set on update.
- `cross-scope-reference` (warning): a foreign key from a model into a scoped model the agent
  may delete from, that does not carry the scope (`orders.customer_id → customers.id` instead of
  `(tenant_id, customer_id) → customers(tenant_id, id)`): rows of one tenant may refer to
  another's, and deleting a row still referred to by rows its tenant can't see fails with
  `constraint_violation`.
- `check-constraint-oracle` (warning): a CHECK constraint of the table relating a column the
  agent writes to one it can't read plainly (`CHECK (spend <= credit_limit)`, credit_limit
  masked): whether a write fails with `constraint_violation` tells where the hidden value lies,
  as a restrict row policy would (which the toolset refuses unless `accept_write_oracle`).
- `unmappable-table`: a table without a primary key (reflected mode only).
- `policy-error`: the Toolset refuses the policy (the message says why).
- `scope-collation` (warning): a scoping column whose collation folds case, accents or trailing
  spaces (MySQL's and MariaDB's defaults; SQLite's NOCASE and RTRIM). The toolset still matches
  the principal exactly, but the index lookup reads every look-alike tenant's rows, and the
  application's own queries and unique keys treat `ACME`, `acme` and `acme ` as one tenant.
- `no-row-level-security` (warning, MySQL and MariaDB): the database has no row-level security,
  so the toolset's scoping is the only barrier between tenants there.

Without `models`, each policy model name is matched to a reflected table: an explicit entry in
`tables` ({"Order": "sales_orders"}) first, then the name as is, lower-cased, snake_case, and
snake_case plural (`OrderItem` → `OrderItem`, `orderitem`, `order_item`, `order_items`,
`order_itemes`, `order_itemies` for names ending in y, e.g. `Category` → `categories`).
Field names are then column names.

Adding a check is one function in this module: decorate it with `@model_check` (called with each
policy model found in the database, in policy order) or `@policy_check` (called once, after the
model checks, with everything they found), return its findings, and list its code above. Checks
run in the order they are defined; the `Finding.code` is stable and documented.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sqlalchemy import column as sql_column
from sqlalchemy import func, inspect
from sqlalchemy import select as sql_select
from sqlalchemy import table as sql_table
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Mapper, class_mapper

from ormai_agents._conditions import (
    BoolOp,
    Column,
    Compare,
    ConditionSyntaxError,
    In,
    Node,
    Ref,
    columns_used,
    parse_condition,
)
from ormai_agents._dialects import Capabilities, capabilities
from ormai_agents._errors import PolicyError
from ormai_agents._plan import _mapped_classes
from ormai_agents._reflect import Finding, Severity, reflect_models, table_candidates
from ormai_agents.policy import FieldAction, ModelPolicy, Policy, RowPolicy, WriteAction

__all__ = [
    "TENANT_COLUMNS",
    "Finding",
    "LintContext",
    "ModelView",
    "Severity",
    "lint_policy",
    "model_check",
    "policy_check",
    "reflect_models",
    "table_candidates",
]

TENANT_COLUMNS = frozenset(
    {"tenant_id", "tenant", "tenantid", "org_id", "organization_id", "organisation_id", "account_id",
     "workspace_id", "company_id", "team_id"}  # fmt: skip
)


@dataclass
class ModelView:
    """A policy model as it exists in the database: attribute → column name, and its table."""

    name: str
    policy: ModelPolicy
    table: str
    schema: str | None
    columns: dict[str, str]
    db_columns: set[str]  # the table's columns, as the database reports them

    @cached_property
    def conditions(self) -> list[tuple[RowPolicy, Node | ConditionSyntaxError]]:
        """Each row policy with its parsed condition, or the syntax error that stopped it."""
        out: list[tuple[RowPolicy, Node | ConditionSyntaxError]] = []
        for rp in self.policy.row_policies:
            try:
                out.append((rp, parse_condition(rp.condition)))
            except ConditionSyntaxError as exc:
                out.append((rp, exc))
        return out

    @property
    def trees(self) -> list[tuple[RowPolicy, Node]]:
        return [(rp, t) for rp, t in self.conditions if not isinstance(t, ConditionSyntaxError)]

    @property
    def scoped(self) -> list[str]:
        """The scoping attributes that are columns of the model."""
        return [a for a in self.policy.scoping if a in self.columns]

    @property
    def restricts(self) -> list[tuple[RowPolicy, Node]]:
        return [(rp, t) for rp, t in self.trees if not rp.bypass and rp.mode == "restrict"]


@dataclass
class LintContext:
    """What every check may read: the policy, the database, the models found in it, and the
    findings so far."""

    policy: Policy
    bind: Engine | Connection
    inspector: Any
    source: Any  # the models the Toolset is built from: mapped classes or what `models` named
    classes: dict[str, type]  # mapped class by name
    views: list[ModelView] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @cached_property
    def capabilities(self) -> Capabilities:
        return capabilities(self.bind.dialect)


ModelCheck = Callable[[LintContext, ModelView], Iterable[Finding]]
PolicyCheck = Callable[[LintContext], Iterable[Finding]]
MODEL_CHECKS: list[ModelCheck] = []
POLICY_CHECKS: list[PolicyCheck] = []


def model_check(check: ModelCheck) -> ModelCheck:
    """Register a check run with each policy model found in the database."""
    MODEL_CHECKS.append(check)
    return check


def policy_check(check: PolicyCheck) -> PolicyCheck:
    """Register a check run once, after the model checks."""
    POLICY_CHECKS.append(check)
    return check


def lint_policy(
    policy: Policy,
    bind: Engine | Connection,
    *,
    models: Any = None,
    tables: Mapping[str, str] | None = None,
    schema: str | None = None,
) -> list[Finding]:
    """Every finding for `policy` on the database behind `bind` (see the module docstring)."""
    if models is None:
        classes, found = reflect_models(bind, policy, tables=tables, schema=schema)
        source: Any = classes
    else:
        classes, found = _mapped_classes(models), []
        source = models
    ctx = LintContext(policy, bind, inspect(bind), source, {getattr(c, "__name__", ""): c for c in classes})
    ctx.findings += found
    for name, mp in policy.models.items():
        view = _view(ctx, name, mp, schema, mapped_only=models is not None)
        if view is not None:
            ctx.views.append(view)
    for view in ctx.views:
        for check in MODEL_CHECKS:
            ctx.findings += check(ctx, view)
    for policy_wide in POLICY_CHECKS:
        ctx.findings += policy_wide(ctx)
    return ctx.findings


def _view(ctx: LintContext, name: str, mp: ModelPolicy, schema: str | None, mapped_only: bool) -> ModelView | None:
    """The model as it exists in the database, or None (with a finding when `models` were given)."""
    cls = ctx.classes.get(name)
    if cls is None:
        if mapped_only:
            known = ", ".join(sorted(ctx.classes)) or "none"
            ctx.findings.append(
                Finding("unknown-model", name, f"model {name!r} is not among the mapped classes",
                        f"fix the name (mapped classes: {known}) or remove it")  # fmt: skip
            )
        return None
    mapper: Mapper[Any] = class_mapper(cls)
    local = mapper.local_table
    table_name = str(getattr(local, "name", ""))
    table_schema = getattr(local, "schema", None) or schema
    if mapped_only and not ctx.inspector.has_table(table_name, schema=table_schema):
        ctx.findings.append(
            Finding("unknown-model", name, f"the database has no table {table_name!r} for model {name!r}",
                    "create the table (run the migrations) or point --db at the right database")  # fmt: skip
        )
        return None
    columns = {
        prop.key: prop.columns[0].name
        for prop in mapper.column_attrs
        if len(prop.columns) == 1 and hasattr(prop.columns[0], "table")
    }
    db_columns = {c["name"] for c in ctx.inspector.get_columns(table_name, schema=table_schema)}
    return ModelView(name, mp, table_name, table_schema, columns, db_columns)


# --- checks of one model ---------------------------------------------------------------------------


def _unknown(view: ModelView, where: str, attr: str) -> Finding:
    return Finding("unknown-field", view.name, f"{where} names {attr!r}, which is not a column of {view.name}",
                   f"columns of {view.name}: {', '.join(view.columns)}")  # fmt: skip


@model_check
def mapped_columns_exist(ctx: LintContext, view: ModelView) -> Iterable[Finding]:
    """unknown-field: a mapped column the table lacks (an allowed model)."""
    if not view.policy.allowed:
        return
    for attr, col in view.columns.items():
        if col not in view.db_columns:
            yield Finding("unknown-field", view.name,
                          f"{view.name}.{attr} is mapped to column {col!r}, which table {view.table!r} lacks",
                          "run the migrations or remove the column from the model")  # fmt: skip


@model_check
def named_columns_exist(ctx: LintContext, view: ModelView) -> Iterable[Finding]:
    """unknown-field: fields, scoping and write options naming no column."""
    mp, wp = view.policy, view.policy.write_policy
    for where, names in (
        ("fields", list(mp.fields)),
        ("scoping", list(mp.scoping)),
        ("write_policy.auto_set", list(wp.auto_set)),
        ("write_policy.auto_set_on_update", list(wp.auto_set_on_update)),
        ("write_policy.immutable_fields", wp.immutable_fields),
        ("write_policy.required_fields", wp.required_fields),
    ):
        yield from (_unknown(view, where, attr) for attr in names if attr not in view.columns)


@model_check
def row_policy_conditions(ctx: LintContext, view: ModelView) -> Iterable[Finding]:
    """bad-condition, and unknown-field for the columns a condition names."""
    for rp, tree in view.conditions:
        if isinstance(tree, ConditionSyntaxError):
            yield Finding("bad-condition", view.name, f"row policy {rp.name!r}: {tree}", "fix the condition's syntax")
            continue
        for attr in sorted(columns_used(tree)):
            if attr not in view.columns:
                yield _unknown(view, f"row policy {rp.name!r}", attr)


@model_check
def unscoped_tenant_columns(ctx: LintContext, view: ModelView) -> Iterable[Finding]:
    """unscoped-tenant-column: tenant-like columns with nothing tying them to the principal."""
    if not view.policy.allowed or view.policy.scoping:
        return
    for attr, col in view.columns.items():
        if col.lower() not in TENANT_COLUMNS or any(attr in _principal_tied(t) for _, t in view.restricts):
            continue
        yield Finding("unscoped-tenant-column", view.name,
                      f"{view.name} has a tenant-like column {attr!r} but no scoping: the agent sees every "
                      "tenant's rows",
                      f"add scoping: {{{attr}: principal.tenant_id}} (or the principal path that holds "
                      "it)")  # fmt: skip


@model_check
def unindexed_scope_columns(ctx: LintContext, view: ModelView) -> Iterable[Finding]:
    """unindexed-scope-column: scoping columns that lead no index."""
    scoped = view.scoped
    if not view.policy.allowed or not scoped:
        return
    scope_cols = {view.columns[a] for a in scoped}
    keys = _index_keys(ctx.inspector, view)
    for attr in scoped:
        col = view.columns[attr]
        if col in view.db_columns and not any(_leads(key, col, scope_cols) for key in keys):
            yield Finding("unindexed-scope-column", view.name,
                          f"scoping column {view.table}.{col} is not the leading column of any index: every call "
                          "scans the table",
                          f"CREATE INDEX ix_{view.table}_{col} ON {view.table} ({col}), or index=True on the mapped "
                          "column",
                          "warning")  # fmt: skip


def _index_keys(inspector: Any, view: ModelView) -> list[list[str]]:
    """The column lists of the table's indexes, primary key and unique constraints."""
    keys = [list(ix.get("column_names") or []) for ix in inspector.get_indexes(view.table, schema=view.schema)]
    keys.append(list(inspector.get_pk_constraint(view.table, schema=view.schema).get("constrained_columns") or []))
    with contextlib.suppress(NotImplementedError):  # dialects without the reflection
        uniques = inspector.get_unique_constraints(view.table, schema=view.schema)
        keys += [list(u.get("column_names") or []) for u in uniques]
    return keys


@model_check
def restrict_grants_nothing(ctx: LintContext, view: ModelView) -> Iterable[Finding]:
    """restrict-grants-nothing: restrict policies on a scoping column (ANDed with the scope, they
    can't widen it)."""
    if not view.policy.allowed:
        return
    scoping = view.policy.scoping
    for rp, tree in view.restricts:
        tied = _principal_tied(tree) & set(view.scoped)
        if tied:
            col = sorted(tied)[0]
            yield Finding("restrict-grants-nothing", view.name,
                          f"row policy {rp.name!r} is mode='restrict' (the default), so it is ANDed with the scoping "
                          f"({col} = {scoping[col]}): it can only narrow the rows, never add rows outside the scope",
                          f"to grant the rows it matches in addition to the scoped ones, set mode: permit on "
                          f"{rp.name!r} (scope OR condition); or scope with {{{col}: <principal list path>}}; or "
                          "remove it if it only repeats the scope")  # fmt: skip


@model_check
def create_without_auto_set(ctx: LintContext, view: ModelView) -> Iterable[Finding]:
    """create-without-auto-set: creates that leave the tenant to the agent."""
    mp = view.policy
    if not mp.allowed or mp.write_policy.create is WriteAction.Deny:
        return
    scoped = view.scoped
    tenant_like = [a for a, c in view.columns.items() if c.lower() in TENANT_COLUMNS and a not in scoped]
    for attr in scoped + tenant_like:
        if attr not in mp.write_policy.auto_set:
            what = "scoping column" if attr in scoped else "tenant-like column"
            path = mp.scoping.get(attr, "principal.tenant_id")
            yield Finding("create-without-auto-set", view.name,
                          f"creates are allowed but {what} {attr!r} is not auto-set: the agent must send the tenant "
                          "itself",
                          f"add write_policy.auto_set: {{{attr}: {path}}}")  # fmt: skip


@model_check
def scope_column_writable(ctx: LintContext, view: ModelView) -> Iterable[Finding]:
    """scope-column-writable: updates that may move a row to another tenant."""
    mp, wp = view.policy, view.policy.write_policy
    if not mp.allowed or (wp.update is WriteAction.Deny and wp.bulk_update is WriteAction.Deny):
        return
    for attr in view.scoped:
        fp = mp.fields.get(attr)
        action = fp.action if fp is not None else mp.default_field_action
        if action is FieldAction.Allow and attr not in wp.immutable_fields and attr not in wp.auto_set_on_update:
            yield Finding("scope-column-writable", view.name,
                          f"updates are allowed and scoping column {attr!r} can be changed by the agent",
                          f"add {attr!r} to write_policy.immutable_fields")  # fmt: skip


@model_check
def check_constraint_oracles(ctx: LintContext, view: ModelView) -> Iterable[Finding]:
    """check-constraint-oracle: CHECK constraints that make a write's outcome an oracle."""
    written = _written_columns(view)
    if not written:
        return
    plain = {view.columns[a] for a in view.columns if _action(view, a) is FieldAction.Allow}
    hidden = view.db_columns - plain
    for check in ctx.inspector.get_check_constraints(view.table, schema=view.schema):
        text = str(check.get("sqltext") or "")
        used = {c for c in view.db_columns if re.search(rf"(?<![\w$]){re.escape(c)}(?![\w$])", text, re.IGNORECASE)}
        sent, secret = sorted(used & written), sorted(used & hidden)
        if sent and secret:
            name = check.get("name") or "a CHECK constraint"
            yield Finding("check-constraint-oracle", view.name,
                          f"{name} of {view.table} relates {', '.join(sent)}, which the agent writes, to "
                          f"{', '.join(secret)}, which it can't read: whether a write fails with "
                          "constraint_violation tells it where the hidden value lies",
                          f"make {', '.join(secret)} readable, or {', '.join(sent)} not writable, if the agent may "
                          "not learn it", "warning")  # fmt: skip


def _action(view: ModelView, attr: str) -> FieldAction:
    fp = view.policy.fields.get(attr)
    return fp.action if fp is not None else view.policy.default_field_action


def _written_columns(view: ModelView) -> set[str]:
    """Columns the agent may send in a create, update or bulk_update of the model."""
    mp, wp = view.policy, view.policy.write_policy
    creates = wp.create is not WriteAction.Deny
    updates = wp.update is not WriteAction.Deny or wp.bulk_update is not WriteAction.Deny
    if not mp.allowed or not (creates or updates):
        return set()
    server_set = set(wp.auto_set) | set(wp.auto_set_on_update) | set(mp.scoping)
    return {
        view.columns[a] for a in view.columns
        if _action(view, a) is FieldAction.Allow and a not in server_set
        and (creates or a not in wp.immutable_fields)
    }  # fmt: skip


# --- checks of the whole policy ------------------------------------------------------------------


@policy_check
def cross_scope_references(ctx: LintContext) -> Iterable[Finding]:
    """cross-scope-reference (see `_cross_scope_references`)."""
    return _cross_scope_references(ctx.policy, ctx.classes)


@policy_check
def no_row_level_security(ctx: LintContext) -> Iterable[Finding]:
    """no-row-level-security: MySQL and MariaDB have none."""
    name = ctx.capabilities.name
    if name in ("mysql", "mariadb"):
        yield Finding("no-row-level-security", None,
                      f"{name} has no row-level security: the toolset's scoping is the only barrier between "
                      "tenants in this database (a raw query or another service sees every tenant)",
                      "connect the agents as a database user granted only the tables and operations the policy "
                      "allows; PostgreSQL adds row-level security (ormai-agents rls)", "warning")  # fmt: skip


@policy_check
def scope_collations(ctx: LintContext) -> Iterable[Finding]:
    """scope-collation: scoping columns whose collation folds case, accents or trailing spaces."""
    dialect = ctx.capabilities.name
    for view in ctx.views:
        scoped = [view.columns[a] for a in view.scoped]
        if not view.policy.allowed or not scoped:
            continue
        collations = _collations(ctx.bind, view)
        for col in scoped:
            collation = collations.get(col)
            folds = _folds(dialect, collation)
            if folds:
                yield _collation_finding(view, col, collation, folds, _EXACT_COLLATIONS.get(dialect))


def _collation_finding(
    view: ModelView, col: str, collation: str | None, folds: list[str], exact: str | None
) -> Finding:
    fix = (
        f"give {view.table}.{col} a binary, NO PAD collation: COLLATE {exact} "
        f"(String(n, collation=\"{exact}\") on the mapped column)"
        if exact else f"declare {view.table}.{col} without {collation}"
    )
    return Finding("scope-collation", view.name,
                   f"scoping column {view.table}.{col} has collation {collation}, which folds {' and '.join(folds)}: "
                   "the toolset still matches the principal exactly, but its index lookup also reads every "
                   "look-alike tenant's rows, and the application's own queries and unique keys treat "
                   "'ACME', 'acme' and 'acme ' as one tenant", fix, "warning")  # fmt: skip


@policy_check
def policy_errors(ctx: LintContext) -> Iterable[Finding]:
    """policy-error: the Toolset refuses the policy (checked once the names are right)."""
    if any(f.code in ("unknown-model", "unknown-field", "bad-condition") for f in ctx.findings):
        return
    from ormai_agents.toolset import Toolset

    try:
        Toolset(ctx.source, ctx.policy)
    except PolicyError as exc:
        yield Finding("policy-error", None, str(exc), "fix the policy as the message says")


# --- helpers -----------------------------------------------------------------------------------------


def _cross_scope_references(policy: Policy, classes: Mapping[str, Any]) -> list[Finding]:
    """Foreign keys into a scoped model the agent may delete from, that don't carry the scope.

    Such a key lets a row of one tenant refer to another tenant's row. The agent can't create
    such links (writes check references), but rows written by other code can hold them, and then
    deleting the referenced row fails for its own tenant with `constraint_violation` because of
    rows that tenant can't see.
    """
    out: list[Finding] = []
    by_table = {class_mapper(c).local_table: (n, policy.models[n]) for n, c in classes.items() if n in policy.models}
    for table, (name, mp) in by_table.items():
        if not mp.allowed:
            continue
        attr_of = {c: p.key for p in class_mapper(classes[name]).column_attrs for c in p.columns}
        keys = getattr(table, "foreign_key_constraints", ())
        for fk in sorted(keys, key=lambda c: [e.parent.name for e in c.elements]):
            target = by_table.get(fk.referred_table)
            if target is None or not target[1].scoping or target[1].write_policy.delete is WriteAction.Deny:
                continue  # an unscoped target is shared by every scope; without deletes nothing fails
            tname, tmp = target
            tattr_of = {c: p.key for p in class_mapper(classes[tname]).column_attrs for c in p.columns}
            pairs = {(attr_of.get(e.parent), tattr_of.get(e.column)) for e in fk.elements}
            missing = [
                (col, path) for col, path in tmp.scoping.items()
                if not any(local is not None and mp.scoping.get(local) == path and remote == col
                           for local, remote in pairs)
            ]  # fmt: skip
            if not missing:
                continue
            local = ", ".join(str(attr_of.get(e.parent)) for e in fk.elements)
            remote = ", ".join(str(tattr_of.get(e.column)) for e in fk.elements)
            scope = " and ".join(f"{col} = {path}" for col, path in missing)
            out.append(
                Finding("cross-scope-reference", name,
                        f"{name}.({local}) refers to {tname}.({remote}) without its scope ({scope}): a row of one "
                        f"scope may refer to another scope's {tname}, and deleting that {tname} then fails for its "
                        "own tenant with constraint_violation because of rows it can't see",
                        f"make the foreign key carry the scope: ({', '.join(m for m, _ in missing)}, {remote}) on "
                        f"{tname} as a unique key, referenced together with {name}'s own scoping column",
                        "warning")  # fmt: skip
            )
    return out


_EXACT_COLLATIONS = {"mariadb": "utf8mb4_nopad_bin", "mysql": "utf8mb4_0900_bin"}
_COLUMNS = sql_table(
    "COLUMNS", sql_column("TABLE_SCHEMA"), sql_column("TABLE_NAME"), sql_column("COLUMN_NAME"),
    sql_column("COLLATION_NAME"), schema="information_schema",
)  # fmt: skip


def _collations(bind: Engine | Connection, view: ModelView) -> dict[str, str | None]:
    """Column name -> collation name, as the database reports it (None: the binary default)."""
    if bind.dialect.name in ("mysql", "mariadb"):
        schema = view.schema if view.schema is not None else func.database()
        stmt = sql_select(_COLUMNS.c.COLUMN_NAME, _COLUMNS.c.COLLATION_NAME).where(
            _COLUMNS.c.TABLE_SCHEMA == schema, _COLUMNS.c.TABLE_NAME == view.table
        )
        if isinstance(bind, Engine):
            with bind.connect() as conn:
                return {str(r[0]): r[1] for r in conn.execute(stmt)}
        return {str(r[0]): r[1] for r in bind.execute(stmt)}
    if bind.dialect.name == "sqlite":
        # SQLite's reflection leaves collations out: read them from the table's CREATE statement.
        master = sql_table("sqlite_master", sql_column("name"), sql_column("sql"))
        stmt = sql_select(master.c.sql).where(master.c.name == view.table)
        if isinstance(bind, Engine):
            with bind.connect() as conn:
                ddl = conn.execute(stmt).scalar() or ""
        else:
            ddl = bind.execute(stmt).scalar() or ""
        out: dict[str, str | None] = {}
        for col in view.columns.values():
            m = re.search(rf"""(?:^|[,(])\s*["`\[]?{re.escape(col)}["`\]]?\s[^,]*?\bCOLLATE\s+["`]?(\w+)""", ddl, re.I)
            out[col] = m.group(1) if m else None
        return out
    reflected = inspect(bind).get_columns(view.table, schema=view.schema)
    return {c["name"]: getattr(c["type"], "collation", None) for c in reflected}


def _folds(dialect: str, collation: str | None) -> list[str]:
    """What a collation folds, by its name (MySQL and MariaDB name what they fold: _ci, _ai,
    _as, _bin; NO PAD collations are MariaDB's *_nopad_* and MySQL 8's *_0900_*)."""
    if not collation:
        return []
    name = collation.lower()
    if dialect == "sqlite":
        return {"nocase": ["case"], "rtrim": ["trailing spaces"]}.get(name, [])
    if dialect not in ("mysql", "mariadb"):
        return []
    out = []
    if "_ci" in name:
        out.append("case")
    if "_ai" in name or ("_ci" in name and "_as" not in name):
        out.append("accents")
    if name != "binary" and "_nopad_" not in name and "_0900_" not in name:
        out.append("trailing spaces (PAD SPACE)")
    return out


def _leads(key: list[str], col: str, scope_cols: set[str]) -> bool:
    """An index helps the scope when its leading columns are scoping columns including `col`."""
    prefix: list[str] = []
    for k in key:
        if k not in scope_cols:
            break
        prefix.append(k)
    return col in prefix


def _principal_tied(node: Node) -> set[str]:
    """Columns that the condition compares, positively, with a principal value (= or IN)."""
    out: set[str] = set()
    if isinstance(node, BoolOp):
        for item in node.items:
            out |= _principal_tied(item)
    elif isinstance(node, Compare) and node.op == "=":
        sides = (node.left, node.right)
        if any(isinstance(s, Ref) for s in sides):
            out |= {s.name for s in sides if isinstance(s, Column)}
    elif isinstance(node, In) and not node.negated and isinstance(node.right, Ref) and isinstance(node.left, Column):
        out.add(node.left.name)
    return out
