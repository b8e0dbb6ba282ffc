"""PostgreSQL row-level security generated from the same `Policy` the toolset enforces.

A second, independent line of defense: the database itself hides other tenants' rows, even from
code that bypasses the toolset. `generate_rls(toolset)` (or `generate_rls(models, policy)`)
returns an `RlsPlan`: the DDL and everything the policy holds that SQL can't express, listed in
`RlsPlan.unsupported` — never silently dropped.

Per table of an allowed model:

- `ENABLE` and `FORCE ROW LEVEL SECURITY` (FORCE: the table owner is bound too).
- `ormai_scope`, PERMISSIVE, FOR ALL: the bypass conditions OR the scoping rules (ANDed), in
  `USING` and `WITH CHECK`. A model without scoping gets `true` here, so only its restrict
  policies limit it (as in the toolset).
- `ormai_permit_<name>`, PERMISSIVE, FOR SELECT, per `mode="permit"` row policy: widens reads
  only, and only when every scoping value is present (a missing tenant denies the whole call in
  the toolset). Writes stay inside the scope, so there is no `WITH CHECK` to give.
- `ormai_restrict_<name>`, RESTRICTIVE, FOR ALL, per restrict row policy, in `USING` and
  `WITH CHECK`.

The principal is read from transaction-local settings, which `Toolset(..., rls=True)` sets at the
start of every call with `set_config(name, value, true)`:

| setting | value |
| --- | --- |
| `ormai.tenant_id`, `ormai.user_id` | the value as text (a scalar; anything else is left empty) |
| `ormai.roles` | a JSON array of strings, `[]` without roles |
| `ormai.metadata.<key>[.<key>...]` | the value as JSON (a list of strings and numbers; anything else is left empty) |

An unset or empty setting means no rows: every reference is wrapped in `NULLIF(..., '')` and a
condition that needs a missing value is false, as in the toolset. A bypass row policy becomes part
of `ormai_scope`: its condition is compiled from the same settings, so it holds in the database
exactly when it holds in the toolset. Jobs that must see every row use a role with `BYPASSRLS`.

This is the one place DDL text is produced. No agent input reaches it: identifiers are quoted by
the dialect's identifier preparer and literals from the policy are rendered by SQLAlchemy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Date,
    DateTime,
    Float,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    Time,
    Uuid,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy import Enum as SAEnum
from sqlalchemy import column as sql_column
from sqlalchemy import table as sql_table
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.sql.elements import ColumnClause
from sqlalchemy.types import TypeEngine

from ormai_agents import _conditions as c
from ormai_agents import _types
from ormai_agents._plan import ModelPlan, build_plans
from ormai_agents._rls_settings import principal_settings, setting_name, settings_paths, settings_statement
from ormai_agents.policy import Policy

__all__ = [
    "RlsPlan",
    "Unsupported",
    "generate_rls",
    "generate_rls_for_database",
    "principal_settings",
    "setting_name",
    "settings_paths",
    "settings_statement",
]

_MAX_IDENT = 63  # PostgreSQL truncates longer identifiers


@dataclass(frozen=True, slots=True)
class Unsupported:
    """One rule of the policy the generated row-level security does not enforce, and why."""

    model: str
    rule: str  # "scoping tenant_id", "row policy 'name'", "model"
    reason: str

    def __str__(self) -> str:
        return f"{self.model}: {self.rule}: {self.reason}"


@dataclass(frozen=True, slots=True)
class RlsPlan:
    """The DDL for a policy, and what of the policy it could not express.

    `statements` are complete SQL statements without trailing semicolons, to run in order in one
    transaction (see `apply`). `settings` lists the settings the policies read.
    """

    statements: list[str]
    unsupported: list[Unsupported] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)
    # (schema or None, table, policy name) of every policy created
    policies: list[tuple[str | None, str, str]] = field(default_factory=list)

    @property
    def sql(self) -> str:
        """The statements as one script."""
        return "".join(f"{s};\n" for s in self.statements)

    def apply(self, connection: Connection) -> None:
        """Run the statements on a sync connection, in its current transaction.

        (With an `AsyncConnection`: `await conn.run_sync(plan.apply)`.)
        """
        for statement in self.statements:
            connection.exec_driver_sql(statement)


# --- compiling conditions to SQL over the settings -------------------------------------------


class _CantExpress(Exception):
    pass


def _cast_type(column_type: TypeEngine[Any]) -> TypeEngine[Any] | None:
    """The type a setting's text is cast to before comparing it with a column of this type."""
    if isinstance(column_type, SAEnum):
        return None
    if isinstance(column_type, String):
        # text, not varchar(n): casting to varchar(n) would truncate a longer value into a match.
        return Text()
    if isinstance(column_type, Boolean):
        return Boolean()
    if isinstance(column_type, Integer):
        return column_type
    if isinstance(column_type, (Numeric, Float)):
        return Numeric()
    if isinstance(column_type, (Uuid, DateTime, Date, Time)):
        return column_type
    return None


class _Settings:
    """SQL reading the principal's settings, and the presence guards a condition needs."""

    def __init__(self, names: set[str]) -> None:
        self.guards: dict[tuple[tuple[str, ...], str], ColumnElement[bool]] = {}
        self.names = names  # every setting read, shared across conditions

    def raw(self, path: tuple[str, ...]) -> ColumnElement[Any]:
        name = setting_name(path)
        if name is None:
            raise _CantExpress(
                f"principal.{'.'.join(path)}: PostgreSQL setting names allow letters, digits and "
                "underscores only"
            )
        self.names.add(name)
        return func.nullif(func.current_setting(literal(name, Text()), true()), literal("", Text()))

    def json(self, path: tuple[str, ...]) -> ColumnElement[Any]:
        return cast(self.raw(path), postgresql.JSONB)

    def _first(self, j: ColumnElement[Any]) -> ColumnElement[Any]:
        # A JSON scalar as text: "x" -> x, 5 -> 5, true -> true.
        return func.jsonb_build_array(j).op("->>", return_type=Text())(0)

    def present(self, path: tuple[str, ...]) -> None:
        """Guard: the value is there (the toolset's "missing" is None or an empty string)."""
        self.guards.setdefault((path, "present"), self.raw(path).is_not(None))

    def for_column(self, path: tuple[str, ...], target: TypeEngine[Any]) -> ColumnElement[Any]:
        """The path's single value, cast to a column's type; NULL (and the guard false) when
        the toolset could not coerce it either: a list, or a JSON type the column doesn't take."""
        if path[0] == "roles":
            raise _CantExpress("principal.roles is a list; compare it with IN")
        if path[0] != "metadata":
            text_value: ColumnElement[Any] = self.raw(path)
        else:
            j = self.json(path)
            kind = func.jsonb_typeof(j)
            first = self._first(j)
            if isinstance(target, Text):
                text_value = case((kind == "string", first))
            elif isinstance(target, (Integer, Numeric)):
                text_value = case((kind.in_(["string", "number"]), first),
                                  (kind == "boolean", case((first == "true", "1"), else_="0")))  # fmt: skip
            elif isinstance(target, Boolean):
                text_value = case((kind.in_(["string", "number", "boolean"]), first))
            else:
                text_value = case((kind == "string", first))
        self.guards.setdefault((path, f"column {target!r}"), text_value.is_not(None))
        return cast(text_value, target)

    def typed(self, path: tuple[str, ...], kind: str) -> ColumnElement[Any]:
        """The value as text (strings only) or as a number (numbers and booleans, which Python
        compares as 1 and 0); NULL for any other type, which then equals nothing."""
        if path[0] == "roles":
            raise _CantExpress("principal.roles is a list; compare it with IN")
        if path[0] != "metadata":
            raw = self.raw(path)
            if kind == "text":
                return raw
            # tenant_id and user_id are stored as text: numeric-looking text counts as a number.
            return case((raw.regexp_match(r"^-?[0-9]+(\.[0-9]+)?$"), cast(raw, Numeric())))
        j = self.json(path)
        json_kind = func.jsonb_typeof(j)
        first = self._first(j)
        if kind == "text":
            return case((json_kind == "string", first))
        return case((json_kind == "number", cast(first, Numeric())),
                    (json_kind == "boolean", case((first == "true", 1), else_=0)))  # fmt: skip

    def listed(self, path: tuple[str, ...]) -> ColumnElement[Any]:
        """The value as a JSON array (a single value becomes an array of one), NULL when unset."""
        j = self.json(path)
        if path[0] == "roles":
            return j
        return case((func.jsonb_typeof(j) == "array", j), else_=func.jsonb_build_array(j))

    def elements(self, path: tuple[str, ...]) -> ColumnElement[Any] | None:
        """A set-returning expression of the path's values as text (a single value is a set of
        one); None for tenant_id and user_id, which hold one value. Only strings and numbers:
        the toolset refuses other scope values."""
        if path[0] in ("tenant_id", "user_id"):
            return None
        j = self.json(path)
        self.guards.setdefault((path, "set"), j.is_not(None))
        if path[0] == "roles":
            return func.jsonb_array_elements_text(j)
        listed = case(
            (func.jsonb_typeof(j) == "array", j),
            (func.jsonb_typeof(j).in_(["string", "number"]), func.jsonb_build_array(j)),
        )
        return func.jsonb_array_elements_text(listed)

    def scope_present(self, path: tuple[str, ...]) -> ColumnElement[bool]:
        """True when the path holds a usable scope value: a string, a number or a non-empty list."""
        if path[0] in ("tenant_id", "user_id"):
            return self.raw(path).is_not(None)
        j = self.json(path)
        kind = func.jsonb_typeof(j)
        return or_(kind.in_(["string", "number"]), and_(kind == "array", func.jsonb_array_length(j) > 0))


def _scope_clause(settings: _Settings, column: Any, path: tuple[str, ...]) -> ColumnElement[bool]:
    target = _cast_type(column.type)
    if target is None:
        raise _CantExpress(f"columns of type {column.type!r} can't be compared with a setting")
    col = sql_column(column.name, column.type)
    elements = settings.elements(path)
    if elements is None:
        return col == settings.for_column(path, target)
    return col.in_(select(cast(elements, target)))


def _equal(op: str, lhs: Any, rhs: Any) -> ColumnElement[bool]:
    # Python's == between different types is False, never an error: NULL (no value of that
    # type) becomes False for "=" and True for "!=".
    return func.coalesce(c.sql_compare(lhs, op, rhs), op == "!=")


class _Compiler:
    """One row-policy condition as SQL over the table's columns and the principal's settings.

    It follows the toolset's evaluation: principal values compare as in Python (== across types
    is False; an ordering across types, or a missing value anywhere, makes the condition hold for
    no row).
    """

    def __init__(self, plan: ModelPlan, settings: _Settings) -> None:
        self.plan = plan
        self.settings = settings

    def column(self, name: str) -> tuple[ColumnClause[Any], TypeEngine[Any]]:
        core = self.plan.columns[name]
        return sql_column(core.name, core.type), core.type

    def literal_for(self, name: str, lit: c.Literal) -> Any:
        _, ctype = self.column(name)
        return literal(_coerce_literal(self.plan, name, lit.value), ctype)

    def target(self, ctype: TypeEngine[Any]) -> TypeEngine[Any]:
        target = _cast_type(ctype)
        if target is None:
            raise _CantExpress(f"columns of type {ctype!r} can't be compared with a setting")
        return target

    def compile(self, node: c.Node) -> ColumnElement[bool]:
        if isinstance(node, c.Const):
            return true() if node.value else false()
        if isinstance(node, c.BoolOp):
            parts = [self.compile(item) for item in node.items]
            return and_(*parts) if node.op == "and" else or_(*parts)
        if isinstance(node, c.Not):
            return not_(self.compile(node.item))
        if isinstance(node, c.IsNull):
            col, _ = self.column(node.column.name)
            return col.is_not(None) if node.negated else col.is_(None)
        if isinstance(node, c.Compare):
            return self.compare(node)
        return self.in_(node)

    def compare(self, node: c.Compare) -> ColumnElement[bool]:
        left, right, op = node.left, node.right, node.op
        if not isinstance(left, c.Column) and isinstance(right, c.Column):
            left, right, op = right, left, c.FLIP[op]
        if isinstance(left, c.Column):
            return self.compare_column(left, op, right)
        # Both sides are principal values or literals.
        if isinstance(left, c.Literal) and isinstance(right, c.Literal):
            try:
                return true() if c.PY_OPS[op](left.value, right.value) else false()
            except TypeError:
                raise _CantExpress("literals of different types can't be compared") from None
        if isinstance(left, c.Literal):
            left, right, op = right, left, c.FLIP[op]
        assert isinstance(left, c.Ref)
        if isinstance(right, c.Ref):
            return self.compare_refs(left.path, op, right.path)
        assert isinstance(right, c.Literal)
        return self.compare_ref_literal(left.path, op, right.value)

    def compare_column(self, left: c.Column, op: str, right: c.Operand) -> ColumnElement[bool]:
        col, ctype = self.column(left.name)
        if isinstance(right, c.Column):
            rhs: Any = self.column(right.name)[0]
        elif isinstance(right, c.Literal):
            rhs = self.literal_for(left.name, right)
        else:
            rhs = self.settings.for_column(right.path, self.target(ctype))
        return c.sql_compare(col, op, rhs)

    def compare_ref_literal(self, path: tuple[str, ...], op: str, value: Any) -> ColumnElement[bool]:
        if isinstance(value, str):
            if op not in ("=", "!="):
                raise _CantExpress("principal values can be compared with text only by = and != (orderings differ)")
            lhs, rhs = self.settings.typed(path, "text"), literal(value, Text())
        else:
            lhs, rhs = self.settings.typed(path, "number"), literal(int(value) if isinstance(value, bool) else value)
        if op in ("=", "!="):
            self.settings.present(path)
            return _equal(op, lhs, rhs)
        self.settings.guards.setdefault((path, "number"), lhs.is_not(None))  # else a TypeError
        return c.sql_compare(lhs, op, rhs)

    def compare_refs(self, a: tuple[str, ...], op: str, b: tuple[str, ...]) -> ColumnElement[bool]:
        if op not in ("=", "!="):
            raise _CantExpress("principal values can be compared with each other only by = and !=")
        self.settings.present(a)
        self.settings.present(b)
        plain = ("tenant_id", "user_id")
        if a[0] in plain and b[0] in plain:
            return c.sql_compare(self.settings.raw(a), op, self.settings.raw(b))
        if a[0] not in plain and b[0] not in plain:
            # As Python: numbers and booleans compare by value (1 == True), strings as text,
            # anything else (lists) as JSON; different types are unequal.
            num, text_ = self.settings.typed, self.settings.typed
            equal = func.coalesce(
                num(a, "number") == num(b, "number"),
                text_(a, "text") == text_(b, "text"),
                self.settings.json(a) == self.settings.json(b),
                False,
            )
            return not_(equal) if op == "!=" else equal
        text_side, json_side = (a, b) if a[0] in plain else (b, a)
        return _equal(op, self.settings.raw(text_side), self.settings.typed(json_side, "text"))

    def in_(self, node: c.In) -> ColumnElement[bool]:
        left, right = node.left, node.right
        if isinstance(left, c.Column):
            col, ctype = self.column(left.name)
            if isinstance(right, c.Ref):
                target = self.target(ctype)
                elements = self.settings.elements(right.path)
                if elements is None:
                    rhs = self.settings.for_column(right.path, target)
                    return col != rhs if node.negated else col == rhs
                sub = select(cast(elements, target))
                return col.not_in(sub) if node.negated else col.in_(sub)
            values = [self.literal_for(left.name, lit) for lit in right]
            return col.not_in(values) if node.negated else col.in_(values)
        if isinstance(left, c.Literal):
            if isinstance(right, c.Ref):
                found = self.literal_in_ref(left.value, right.path)
                return not_(found) if node.negated else found
            hit = left.value in [lit.value for lit in right]
            return true() if hit != node.negated else false()
        assert isinstance(left, c.Ref)
        if isinstance(right, c.Ref):
            raise _CantExpress("a principal value IN another principal value can't be expressed")
        self.settings.present(left.path)
        texts = [lit.value for lit in right if isinstance(lit.value, str)]
        numbers = [int(v) if isinstance(v, bool) else v for v in (lit.value for lit in right) if not isinstance(v, str)]
        parts = []
        if texts:
            as_text = self.settings.typed(left.path, "text")
            parts.append(func.coalesce(as_text.in_([literal(t, Text()) for t in texts]), False))
        if numbers:
            as_number = self.settings.typed(left.path, "number")
            parts.append(func.coalesce(as_number.in_([literal(n) for n in numbers]), False))
        found = or_(*parts) if len(parts) > 1 else parts[0]
        return not_(found) if node.negated else found

    def literal_in_ref(self, needle: Any, path: tuple[str, ...]) -> ColumnElement[bool]:
        if isinstance(needle, bool):
            raise _CantExpress("true or false can't be looked up IN a principal value")
        self.settings.present(path)
        if path[0] in ("tenant_id", "user_id"):
            kind = "text" if isinstance(needle, str) else "number"
            rhs = literal(needle, Text()) if kind == "text" else literal(needle)
            return _equal("=", self.settings.typed(path, kind), rhs)
        listed = self.settings.listed(path)
        # JSON containment compares typed values, as Python's `in` does (where 1 == True).
        items = [func.jsonb_build_array(literal(needle, Text()) if isinstance(needle, str) else literal(needle))]
        if not isinstance(needle, str) and needle in (0, 1):
            items.append(func.jsonb_build_array(true() if needle else false()))
        found = or_(*(listed.op("@>", is_comparison=True)(item) for item in items))
        return func.coalesce(found, False)


def _coerce_literal(plan: ModelPlan, name: str, value: Any) -> Any:
    core = plan.columns[name]
    try:
        return _types.make_coercer(_types.python_type(core.type))(value)
    except ValueError as exc:  # pragma: no cover - rejected when the plan was built
        raise _CantExpress(str(exc)) from None


# --- DDL ---------------------------------------------------------------------------------------


def generate_rls(
    models: Any,
    policy: Policy | None = None,
    *,
    dialect: Dialect | None = None,
) -> RlsPlan:
    """The row-level security DDL for a `Toolset`, or for mapped classes and a `Policy`.

    `dialect` renders identifiers and literals (pass a connected engine's dialect to match the
    server's string settings); by default a PostgreSQL dialect with standard-conforming strings.
    """
    if policy is None:
        plans = _toolset_plans(models)
    else:
        plans = build_plans(models, policy)
    dialect = dialect or postgresql.dialect()  # type: ignore[no-untyped-call]
    if dialect.name != "postgresql":
        raise ValueError("row-level security is generated for PostgreSQL only")
    out = RlsPlan([])
    names: set[str] = set()
    owners: dict[Any, str] = {}
    for model, plan in plans.items():
        table = plan.selectable
        if not isinstance(table, Table):
            out.unsupported.append(Unsupported(model, "model", "mapped to more than one table (joined inheritance); "
                                               "row-level security is per table"))  # fmt: skip
            continue
        if table in owners:
            out.unsupported.append(Unsupported(model, "model", f"shares its table with {owners[table]}; "
                                               "its rules are not added to that table's policies"))  # fmt: skip
            continue
        owners[table] = model
        target = _Table(model, plan, table, dialect, names, out)
        for build in TABLE_STATEMENTS:
            out.statements.extend(build(target))
    out.unsupported.extend(_folded_settings(names))
    out.settings.extend(sorted(names))
    return out


def _folded_settings(names: set[str]) -> list[Unsupported]:
    """Settings that differ only in case: PostgreSQL reads them as one."""
    by_folded: dict[str, list[str]] = {}
    for name in sorted(names):
        by_folded.setdefault(name.lower(), []).append(name)
    return [
        Unsupported("(policy)", f"settings {', '.join(same)}", "PostgreSQL setting names are case-insensitive, so "
                    "these are one setting: the toolset leaves it empty")
        for same in by_folded.values() if len(same) > 1
    ]  # fmt: skip


def _toolset_plans(toolset: Any) -> dict[str, ModelPlan]:
    from ormai_agents.toolset import Toolset

    if not isinstance(toolset, Toolset):
        raise TypeError("generate_rls takes a Toolset, or mapped classes and a Policy")
    return {name: toolset.plan(name) for name in toolset.model_names}


@dataclass
class _Table:
    """One model's table, as the statement builders see it. Rules that can't be expressed are
    reported in the plan's `unsupported`, never dropped silently."""

    model: str
    plan: ModelPlan
    table: Table
    dialect: Dialect
    names: set[str]  # every setting read, across tables
    out: RlsPlan

    @property
    def qtable(self) -> str:
        return self.dialect.identifier_preparer.format_table(self.table)

    def attempt(self, rule: str, build: Callable[[_Settings], ColumnElement[bool]]) -> tuple[str, _Settings] | None:
        """The rule as SQL text, or None after reporting why it can't be expressed."""
        settings = _Settings(set())
        try:
            expr = build(settings)
            text = str(expr.compile(dialect=self.dialect, compile_kwargs={"literal_binds": True}))
        except _CantExpress as exc:
            self.out.unsupported.append(Unsupported(self.model, rule, str(exc)))
            return None
        except Exception as exc:  # noqa: BLE001 - e.g. a literal SQLAlchemy can't render
            why = f"can't be rendered as SQL ({type(exc).__name__})"
            self.out.unsupported.append(Unsupported(self.model, rule, why))
            return None
        self.names.update(settings.names)
        return text, settings

    def condition(self, node: c.Node, extra: list[ColumnElement[bool]]) -> Callable[[_Settings], ColumnElement[bool]]:
        def build(settings: _Settings) -> ColumnElement[bool]:
            sql = _Compiler(self.plan, settings).compile(node)
            # A condition that needs a missing principal value holds for no row, like the toolset's.
            return and_(*extra, *settings.guards.values(), sql)

        return build

    @cached_property
    def scoping(self) -> tuple[list[str], list[ColumnElement[bool]]]:
        """The scoping rules as SQL, and for each the guard that its principal value is present.
        Each rule that can't be expressed is reported and left out."""
        parts: list[str] = []
        present: list[ColumnElement[bool]] = []
        for fname, column, path, _ in self.plan.scoping:

            def rule(settings: _Settings, column: Any = column, path: tuple[str, ...] = path) -> ColumnElement[bool]:
                if column.table is not self.table:
                    raise _CantExpress("the column is not on the model's table")
                return _scope_clause(settings, column, path)

            done = self.attempt(f"scoping {fname}", rule)
            if done is not None:
                parts.append(done[0])
                present.append(done[1].scope_present(path))
        return parts, present

    def policy(self, kind: str, label: str, mode: str, command: str, using: str, check: bool) -> list[str]:
        """DROP and CREATE of one policy on the table."""
        raw = _policy_name(kind, label)
        self.out.policies.append((self.table.schema, self.table.name, raw))
        name = self.dialect.identifier_preparer.quote(raw)
        ddl = f"CREATE POLICY {name} ON {self.qtable} AS {mode} FOR {command} USING ({using})"
        return [f"DROP POLICY IF EXISTS {name} ON {self.qtable}", ddl + (f" WITH CHECK ({using})" if check else "")]


# The statements for one table, in order. Each builder returns its statements and reports what it
# can't express; to emit something more for every table, write a builder and add it here.


def _enable(t: _Table) -> list[str]:
    """Row-level security on, for the table owner too (FORCE)."""
    return [f"ALTER TABLE {t.qtable} ENABLE ROW LEVEL SECURITY", f"ALTER TABLE {t.qtable} FORCE ROW LEVEL SECURITY"]


def _scope_policy(t: _Table) -> list[str]:
    """`ormai_scope`: the bypass conditions OR the scoping rules, for reads and writes."""
    parts, _ = t.scoping
    bypasses = []
    for rp in t.plan.bypasses:
        done = t.attempt(f"row policy {rp.policy.name!r} (bypass)", t.condition(rp.condition.tree, []))
        if done is not None:
            bypasses.append(done[0])
    if t.plan.scoping and parts:
        scope = " AND ".join(f"({p})" for p in parts) if len(parts) > 1 else parts[0]
        using = " OR ".join([f"({b})" for b in bypasses] + [f"({scope})"]) if bypasses else scope
    else:
        using = "true"
    return t.policy("scope", "", "PERMISSIVE", "ALL", using, True)


def _permit_policies(t: _Table) -> list[str]:
    """`ormai_permit_<name>` per permit row policy: widens reads only, and only when every
    scoping value is present."""
    _, present = t.scoping
    out: list[str] = []
    for rp in t.plan.permits:
        done = t.attempt(f"row policy {rp.policy.name!r}", t.condition(rp.condition.tree, present))
        if done is not None:
            out += t.policy("permit", rp.policy.name, "PERMISSIVE", "SELECT", done[0], False)
    return out


def _restrict_policies(t: _Table) -> list[str]:
    """`ormai_restrict_<name>` per restrict row policy, RESTRICTIVE, for reads and writes."""
    out: list[str] = []
    for rp in t.plan.restricts:
        done = t.attempt(f"row policy {rp.policy.name!r}", t.condition(rp.condition.tree, []))
        if done is not None:
            out += t.policy("restrict", rp.policy.name, "RESTRICTIVE", "ALL", done[0], True)
    return out


TABLE_STATEMENTS: tuple[Callable[[_Table], list[str]], ...] = (
    _enable,
    _scope_policy,
    _permit_policies,
    _restrict_policies,
)


def _policy_name(kind: str, label: str) -> str:
    name = f"ormai_{kind}_{label}" if label else f"ormai_{kind}"
    if len(name.encode()) > _MAX_IDENT:
        digest = hashlib.sha256(name.encode()).hexdigest()[:10]
        name = name.encode()[: _MAX_IDENT - 11].decode(errors="ignore") + "_" + digest
    return name


def generate_rls_for_database(
    policy: Policy,
    engine: Engine,
    *,
    models: Any = None,
    tables: Mapping[str, str] | None = None,
    schema: str | None = None,
) -> RlsPlan:
    """`generate_rls` against a live PostgreSQL database (what `ormai-agents rls` runs).

    Without `models`, the policy's models are reflected from the database (see
    `ormai_agents.lint.reflect_models`; `tables` maps model names to table names). Literals are
    rendered for the connected server, and policies named `ormai_*` on the policy's tables that
    the policy no longer produces are dropped first, so a removed row policy leaves the database
    too.
    """
    from ormai_agents._errors import PolicyError

    with engine.connect() as conn:  # connecting initializes the dialect from the server
        if engine.dialect.name != "postgresql":
            raise PolicyError("row-level security needs PostgreSQL; the database given is " + engine.dialect.name)
        if models is None:
            from ormai_agents._reflect import reflect_models

            models, findings = reflect_models(conn, policy, tables=tables, schema=schema)
            if findings:
                raise PolicyError("; ".join(f.message for f in findings))
        plan = generate_rls(models, policy, dialect=engine.dialect)
        default_schema = conn.execute(select(func.current_schema())).scalar_one()
        pg_policies = sql_table(
            "pg_policies", sql_column("schemaname"), sql_column("tablename"), sql_column("policyname")
        )
        existing = conn.execute(
            select(pg_policies.c.schemaname, pg_policies.c.tablename, pg_policies.c.policyname).where(
                pg_policies.c.policyname.startswith("ormai_", autoescape=True)
            )
        ).all()
        conn.rollback()
    preparer = engine.dialect.identifier_preparer
    ours = {(sch or default_schema, tbl) for sch, tbl, _ in plan.policies}
    kept = {(sch or default_schema, tbl, name) for sch, tbl, name in plan.policies}
    stale = [
        f"DROP POLICY IF EXISTS {preparer.quote(name)} ON {preparer.quote_schema(sch)}.{preparer.quote(tbl)}"
        for sch, tbl, name in existing
        if (sch, tbl) in ours and (sch, tbl, name) not in kept
    ]
    return RlsPlan(stale + plan.statements, plan.unsupported, plan.settings, plan.policies)
