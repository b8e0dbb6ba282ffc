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
  may delete from, that does not carry the scope (`orders.customer_id → customers.id` instead of `(tenant_id, customer_id)
  → customers(tenant_id, id)`): rows of one tenant may refer to another's, and deleting a row
  still referred to by rows its tenant can't see fails with `constraint_violation`.
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
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Boolean, MetaData, Table, func, inspect
from sqlalchemy import column as sql_column
from sqlalchemy import select as sql_select
from sqlalchemy import table as sql_table
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, class_mapper

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
from ormai_agents._dialects import capabilities
from ormai_agents._errors import PolicyError
from ormai_agents._plan import _mapped_classes
from ormai_agents._toolspecs import snake
from ormai_agents.policy import FieldAction, ModelPolicy, Policy, WriteAction

__all__ = ["TENANT_COLUMNS", "Finding", "lint_policy", "reflect_models", "table_candidates"]

TENANT_COLUMNS = frozenset(
    {"tenant_id", "tenant", "tenantid", "org_id", "organization_id", "organisation_id", "account_id",
     "workspace_id", "company_id", "team_id"}  # fmt: skip
)

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: a stable `code`, the model it concerns, what is wrong and how to fix it."""

    code: str
    model: str | None
    message: str
    fix: str = ""
    severity: Severity = "error"


def table_candidates(model: str) -> list[str]:
    """The table names tried for a policy model name, in order (see the module docstring)."""
    s = snake(model)
    plural = [s + "s", s + "es"] + ([s[:-1] + "ies"] if s.endswith("y") else [])
    return list(dict.fromkeys([model, model.lower(), s, *plural]))


def reflect_models(
    bind: Engine | Connection,
    policy: Policy,
    *,
    tables: Mapping[str, str] | None = None,
    schema: str | None = None,
) -> tuple[list[type], list[Finding]]:
    """Mapped classes named after the policy's models, built from the database's tables.

    Returns the classes and the findings for models that could not be mapped.
    """
    inspector = inspect(bind)
    existing = set(inspector.get_table_names(schema=schema)) | set(inspector.get_view_names(schema=schema))
    findings: list[Finding] = []

    class Reflected(DeclarativeBase):
        metadata = MetaData(schema=schema)

    classes: list[type] = []
    for name in policy.models:
        explicit = (tables or {}).get(name)
        candidates = [explicit] if explicit else table_candidates(name)
        table_name = next((t for t in candidates if t in existing), None)
        if table_name is None:
            findings.append(
                Finding(
                    "unknown-model",
                    name,
                    f"no table for model {name!r} (tried: {', '.join(candidates)})",
                    f"map it explicitly (--table {name}=TABLE), pass --models, or remove {name} from the policy",
                )
            )
            continue
        table = Table(table_name, Reflected.metadata, autoload_with=bind, listeners=[("column_reflect", _reflected_type)])
        if not table.primary_key.columns:
            findings.append(
                Finding(
                    "unmappable-table",
                    name,
                    f"table {table_name!r} has no primary key, so {name} can't be mapped",
                    "add a primary key, or pass the application's models with --models",
                )
            )
            continue
        classes.append(type(name, (Reflected,), {"__table__": table}))
    return classes, findings


def _reflected_type(inspector: Any, table: Any, info: dict[str, Any]) -> None:
    """MySQL and MariaDB store booleans as TINYINT(1): map them back to Boolean, so policy
    literals such as `is_public = true` fit the reflected column."""
    kind = info.get("type")
    if getattr(kind, "display_width", None) == 1 and type(kind).__name__ == "TINYINT":
        info["type"] = Boolean()


@dataclass(slots=True)
class _View:
    """A policy model as it exists in the database: attribute → column name, and the table."""

    name: str
    policy: ModelPolicy
    table: str
    schema: str | None
    columns: dict[str, str]


def lint_policy(
    policy: Policy,
    bind: Engine | Connection,
    *,
    models: Any = None,
    tables: Mapping[str, str] | None = None,
    schema: str | None = None,
) -> list[Finding]:
    """Every finding for `policy` on the database behind `bind` (see the module docstring)."""
    findings: list[Finding] = []
    if models is None:
        classes, findings = reflect_models(bind, policy, tables=tables, schema=schema)
        source: Any = classes
    else:
        classes = _mapped_classes(models)
        source = models
    by_name = {getattr(c, "__name__", ""): c for c in classes}
    inspector = inspect(bind)
    views: list[_View] = []
    for name, mp in policy.models.items():
        cls = by_name.get(name)
        if cls is None:
            if models is not None:
                findings.append(
                    Finding("unknown-model", name, f"model {name!r} is not among the mapped classes",
                            f"fix the name (mapped classes: {', '.join(sorted(by_name)) or 'none'}) or remove it")  # fmt: skip
                )
            continue
        mapper = class_mapper(cls)
        local = mapper.local_table
        table_name = str(getattr(local, "name", ""))
        table_schema = getattr(local, "schema", None) or schema
        if models is not None and not inspector.has_table(table_name, schema=table_schema):
            findings.append(
                Finding("unknown-model", name, f"the database has no table {table_name!r} for model {name!r}",
                        "create the table (run the migrations) or point --db at the right database")  # fmt: skip
            )
            continue
        columns = {
            prop.key: prop.columns[0].name
            for prop in mapper.column_attrs
            if len(prop.columns) == 1 and hasattr(prop.columns[0], "table")
        }
        views.append(_View(name, mp, table_name, table_schema, columns))

    for view in views:
        db_columns = {c["name"] for c in inspector.get_columns(view.table, schema=view.schema)}
        if view.policy.allowed:
            for attr, col in view.columns.items():
                if col not in db_columns:
                    findings.append(
                        Finding("unknown-field", view.name,
                                f"{view.name}.{attr} is mapped to column {col!r}, which table {view.table!r} lacks",
                                "run the migrations or remove the column from the model")  # fmt: skip
                    )
        findings += _check_model(view, db_columns, inspector)
    findings += _cross_scope_references(policy, by_name)

    findings += _database_findings(views, bind)

    if not any(f.code in ("unknown-model", "unknown-field", "bad-condition") for f in findings):
        from ormai_agents.toolset import Toolset

        try:
            Toolset(source, policy)
        except PolicyError as exc:
            findings.append(Finding("policy-error", None, str(exc), "fix the policy as the message says"))
    return findings


def _check_model(view: _View, db_columns: set[str], inspector: Any) -> list[Finding]:
    out: list[Finding] = []
    mp, name = view.policy, view.name

    def unknown(where: str, attr: str) -> None:
        out.append(
            Finding("unknown-field", name, f"{where} names {attr!r}, which is not a column of {name}",
                    f"columns of {name}: {', '.join(view.columns)}")  # fmt: skip
        )

    wp = mp.write_policy
    for where, names in (
        ("fields", list(mp.fields)),
        ("scoping", list(mp.scoping)),
        ("write_policy.auto_set", list(wp.auto_set)),
        ("write_policy.auto_set_on_update", list(wp.auto_set_on_update)),
        ("write_policy.immutable_fields", wp.immutable_fields),
        ("write_policy.required_fields", wp.required_fields),
    ):
        for attr in names:
            if attr not in view.columns:
                unknown(where, attr)

    trees: list[tuple[Any, Node]] = []
    for rp in mp.row_policies:
        try:
            tree = parse_condition(rp.condition)
        except ConditionSyntaxError as exc:
            out.append(Finding("bad-condition", name, f"row policy {rp.name!r}: {exc}", "fix the condition's syntax"))
            continue
        for attr in sorted(columns_used(tree)):
            if attr not in view.columns:
                unknown(f"row policy {rp.name!r}", attr)
        trees.append((rp, tree))
    if not mp.allowed:
        return out

    scoped = [a for a in mp.scoping if a in view.columns]
    restricts = [(rp, t) for rp, t in trees if not rp.bypass and rp.mode == "restrict"]

    # Tenant-like columns with nothing tying them to the principal.
    if not mp.scoping:
        for attr, col in view.columns.items():
            if col.lower() not in TENANT_COLUMNS:
                continue
            if any(attr in _principal_tied(t) for _, t in restricts):
                continue
            out.append(
                Finding("unscoped-tenant-column", name,
                        f"{name} has a tenant-like column {attr!r} but no scoping: the agent sees every tenant's rows",
                        f"add scoping: {{{attr}: principal.tenant_id}} (or the principal path that holds it)")  # fmt: skip
            )

    # Scoping columns that lead no index.
    if scoped:
        scope_cols = {view.columns[a] for a in scoped}
        keys: list[list[str]] = [list(ix.get("column_names") or []) for ix in inspector.get_indexes(view.table, schema=view.schema)]
        keys.append(list(inspector.get_pk_constraint(view.table, schema=view.schema).get("constrained_columns") or []))
        with contextlib.suppress(NotImplementedError):  # dialects without the reflection
            keys += [list(u.get("column_names") or []) for u in inspector.get_unique_constraints(view.table, schema=view.schema)]
        for attr in scoped:
            col = view.columns[attr]
            if col not in db_columns:
                continue
            if not any(_leads(key, col, scope_cols) for key in keys):
                out.append(
                    Finding("unindexed-scope-column", name,
                            f"scoping column {view.table}.{col} is not the leading column of any index: every call scans the table",
                            f"CREATE INDEX ix_{view.table}_{col} ON {view.table} ({col}), or index=True on the mapped column",
                            "warning")  # fmt: skip
                )

    # Restrict policies on a scoping column: ANDed with the scope, they can't widen it.
    for rp, tree in restricts:
        tied = _principal_tied(tree) & set(scoped)
        if tied:
            col = sorted(tied)[0]
            out.append(
                Finding("restrict-grants-nothing", name,
                        f"row policy {rp.name!r} is mode='restrict' (the default), so it is ANDed with the scoping "
                        f"({col} = {mp.scoping[col]}): it can only narrow the rows, never add rows outside the scope",
                        f"to grant the rows it matches in addition to the scoped ones, set mode: permit on {rp.name!r} "
                        f"(scope OR condition); or scope with {{{col}: <principal list path>}}; or remove it if it "
                        "only repeats the scope")  # fmt: skip
            )

    # Writes that leave the tenant to the agent.
    if wp.create is not WriteAction.Deny:
        tenant_like = [a for a, c in view.columns.items() if c.lower() in TENANT_COLUMNS and a not in scoped]
        for attr in scoped + tenant_like:
            if attr not in wp.auto_set:
                what = "scoping column" if attr in scoped else "tenant-like column"
                out.append(
                    Finding("create-without-auto-set", name,
                            f"creates are allowed but {what} {attr!r} is not auto-set: the agent must send the tenant itself",
                            f"add write_policy.auto_set: {{{attr}: {mp.scoping.get(attr, 'principal.tenant_id')}}}")  # fmt: skip
                )
    if wp.update is not WriteAction.Deny or wp.bulk_update is not WriteAction.Deny:
        for attr in scoped:
            fp = mp.fields.get(attr)
            action = fp.action if fp is not None else mp.default_field_action
            if action is FieldAction.Allow and attr not in wp.immutable_fields and attr not in wp.auto_set_on_update:
                out.append(
                    Finding("scope-column-writable", name,
                            f"updates are allowed and scoping column {attr!r} can be changed by the agent",
                            f"add {attr!r} to write_policy.immutable_fields")  # fmt: skip
                )
    return out


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
        for fk in sorted(getattr(table, "foreign_key_constraints", ()), key=lambda c: [e.parent.name for e in c.elements]):
            target = by_table.get(fk.referred_table)
            if target is None or not target[1].scoping or target[1].write_policy.delete is WriteAction.Deny:
                continue  # an unscoped target is shared by every scope; without deletes nothing fails
            tname, tmp = target
            tattr_of = {c: p.key for p in class_mapper(classes[tname]).column_attrs for c in p.columns}
            pairs = {(attr_of.get(e.parent), tattr_of.get(e.column)) for e in fk.elements}
            missing = [
                (col, path) for col, path in tmp.scoping.items()
                if not any(mp.scoping.get(local) == path and remote == col for local, remote in pairs)
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


def _database_findings(views: list[_View], bind: Engine | Connection) -> list[Finding]:
    """What the database adds to the policy: collations that fold on scoping columns, no RLS."""
    caps = capabilities(bind.dialect)
    out: list[Finding] = []
    if caps.name in ("mysql", "mariadb"):
        out.append(
            Finding("no-row-level-security", None,
                    f"{caps.name} has no row-level security: the toolset's scoping is the only barrier between "
                    "tenants in this database (a raw query or another service sees every tenant)",
                    "connect the agents as a database user granted only the tables and operations the policy "
                    "allows; PostgreSQL adds row-level security (ormai-agents rls)", "warning")  # fmt: skip
        )
    for view in views:
        scoped = [view.columns[a] for a in view.policy.scoping if a in view.columns]
        if not view.policy.allowed or not scoped:
            continue
        collations = _collations(bind, view)
        for col in scoped:
            collation = collations.get(col)
            folds = _folds(caps.name, collation)
            if not folds:
                continue
            exact = _EXACT_COLLATIONS.get(caps.name)
            fix = (
                f"give {view.table}.{col} a binary, NO PAD collation: COLLATE {exact} "
                f"(String(n, collation=\"{exact}\") on the mapped column)"
                if exact else f"declare {view.table}.{col} without {collation}"
            )
            out.append(
                Finding("scope-collation", view.name,
                        f"scoping column {view.table}.{col} has collation {collation}, which folds {' and '.join(folds)}: "
                        "the toolset still matches the principal exactly, but its index lookup also reads every "
                        "look-alike tenant's rows, and the application's own queries and unique keys treat "
                        "'ACME', 'acme' and 'acme ' as one tenant", fix, "warning")  # fmt: skip
            )
    return out


def _collations(bind: Engine | Connection, view: _View) -> dict[str, str | None]:
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
    return {c["name"]: getattr(c["type"], "collation", None) for c in inspect(bind).get_columns(view.table, schema=view.schema)}


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
