"""What each database can do, in one place: the rest of the package asks here, never `dialect.name`.

Statements are built once per principal and cached, so they must not depend on the database
they will run on. Where the SQL differs between databases, the statement holds a construct from
this module (`exact_equals`, `nulls_last`) that SQLAlchemy renders for each dialect when the
statement is compiled, from the capabilities below.

Exact text comparison: a collation may fold case (`'ACME' = 'acme'`), accents (`'acmé' =
'acme'`) and trailing spaces (PAD SPACE: `'acme ' = 'acme'`). MySQL and MariaDB fold all three
by default; PostgreSQL and SQLite fold when a column declares such a collation. Scope and
row-policy comparisons must not fold, so they compare the bytes of the text as well:

    tenant_id = :v AND <bytes of tenant_id> = <bytes of :v>

The first conjunct is what the scope column's index serves (under any collation, identical
strings are equal, so it never loses a row); the second keeps only the exact matches. Where the
catalog says a column needs no second conjunct, or a cheaper one, it is written so (see
`probe_statement`).

How a running statement is interrupted when a call's time budget is spent depends on the driver,
not the dialect: see `ormai_agents._budget.INTERRUPTERS`.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, bindparam, column, false, func, not_, or_, select, table, true
from sqlalchemy import types as sqltypes
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

__all__ = [
    "PROBE_SECONDS",
    "Capabilities",
    "capabilities",
    "exact_compare",
    "exact_equals",
    "exact_in",
    "exact_order",
    "is_text",
    "nulls_last",
    "probe_statement",
    "remember_probe",
]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What one database supports, as the toolset uses it."""

    name: str  # "sqlite", "postgresql", "mysql" or "mariadb"
    # RETURNING usable for the write path's check. SQLite has RETURNING, but 3.40 evaluates
    # `col IS NULL` wrongly inside it, so the row is re-selected instead.
    insert_returning: bool
    update_returning: bool
    delete_returning: bool
    nulls_last: bool  # ORDER BY ... NULLS LAST natively; otherwise emulated with `x IS NULL, x`
    locking_reads: bool  # SELECT ... FOR UPDATE / FOR SHARE (LOCK IN SHARE MODE) hold row locks
    savepoints: bool
    row_level_security: bool  # CREATE POLICY: `Toolset(rls=True)` and `ormai_agents.rls`
    exact_text: str | None  # how the bytes of a text expression are written; `{}` is the expression
    # A binary NO PAD collation of utf8mb4: for a utf8mb4 column, `col COLLATE it = v` is exact
    # (code points, trailing spaces count) without converting each row's value to bytes.
    exact_collation: str | None = None


_SQLITE = Capabilities(
    name="sqlite",
    insert_returning=False,
    update_returning=False,
    delete_returning=False,
    nulls_last=True,
    locking_reads=False,  # the whole database is locked by the write transaction instead
    savepoints=True,
    row_level_security=False,
    exact_text="CAST({} AS BLOB)",
)
_POSTGRESQL = Capabilities(
    name="postgresql",
    insert_returning=True,
    update_returning=True,
    delete_returning=True,
    nulls_last=True,
    locking_reads=True,
    savepoints=True,
    row_level_security=True,
    # As text (citext's own `=` folds case) under the "C" collation: byte order, and cheap
    # (convert_to() allocates a copy per row and tripled the cost of a count).
    exact_text='CAST({} AS TEXT) COLLATE "C"',
)
# CONVERT first: the column's character set may differ from the connection's.
_MYSQL_BYTES = "CAST(CONVERT({} USING utf8mb4) AS BINARY)"


@lru_cache(maxsize=64)
def _mysql(mariadb: bool, version: tuple[int, ...]) -> Capabilities:
    return Capabilities(
        name="mariadb" if mariadb else "mysql",
        # MariaDB 10.5 has INSERT/DELETE ... RETURNING; neither has UPDATE ... RETURNING.
        insert_returning=mariadb and version >= (10, 5),
        update_returning=False,
        delete_returning=mariadb and version >= (10, 5),
        nulls_last=False,
        locking_reads=True,
        savepoints=True,
        row_level_security=False,
        exact_text=_MYSQL_BYTES,
        # MariaDB has NO PAD collations since 10.2 (MySQL's utf8mb4_0900_bin is not tested here).
        exact_collation="utf8mb4_nopad_bin" if mariadb and version >= (10, 2) else None,
    )


def _unknown(name: str) -> Capabilities:
    return Capabilities(
        name=name,
        insert_returning=False,
        update_returning=False,
        delete_returning=False,
        nulls_last=True,
        locking_reads=True,
        savepoints=True,
        row_level_security=False,
        exact_text=None,  # refused when a statement needs it: never a silently folding comparison
    )


def capabilities(dialect: Dialect) -> Capabilities:
    """The capabilities of a (connected) dialect: `engine.dialect`, `connection.dialect`."""
    name = dialect.name
    if name == "sqlite":
        return _SQLITE
    if name == "postgresql":
        return _POSTGRESQL
    if name in ("mysql", "mariadb"):
        mariadb = bool(getattr(dialect, "is_mariadb", False)) or name == "mariadb"
        return _mysql(mariadb, tuple(getattr(dialect, "server_version_info", None) or ()))
    return _unknown(name)


# --- exact text comparison ----------------------------------------------------------------


class _Bytes(FunctionElement[bytes]):
    """The bytes of a text expression (rendered per dialect from `Capabilities.exact_text`)."""

    inherit_cache = True
    name = "ormai_bytes"
    type = sqltypes.LargeBinary()


@compiles(_Bytes)
def _compile_bytes(element: _Bytes, compiler: Any, **kw: Any) -> str:
    template = capabilities(compiler.dialect).exact_text
    if template is None:
        raise CompileError(
            f"ormai-agents compares scope and row-policy text exactly, which it can't do on "
            f"{compiler.dialect.name}; supported databases: SQLite, PostgreSQL, MySQL and MariaDB"
        )
    return template.format(compiler.process(element.clauses, **kw))


def is_text(column: Any) -> bool:
    """Whether comparisons on `column` are subject to a collation (string types)."""
    return isinstance(getattr(column, "type", None), sqltypes.String)


def _bind(column: Any, value: Any) -> Any:
    if isinstance(value, ColumnElement):
        return value
    return bindparam(None, value, type_=column.type, unique=True)


def exact_equals(column: Any, value: Any) -> ColumnElement[bool]:
    """`column = value`, exact for text whatever the collation, and still served by an index on
    `column`. `value` is a Python value (bound) or another column."""
    if not is_text(column):
        return column == value  # type: ignore[no-any-return]
    bound = _bind(column, value)
    return and_(column == bound, _SameBytes(column, bound))


def exact_in(column: Any, values: Sequence[Any], negated: bool = False) -> ColumnElement[bool]:
    """`column IN (values)` (or NOT IN), exact for text. An empty list matches no row (IN) or
    every row (NOT IN)."""
    if not values:
        return true() if negated else false()
    if not is_text(column):
        return column.not_in(values) if negated else column.in_(values)  # type: ignore[no-any-return]
    binds = [_bind(column, v) for v in values]
    if negated:
        return ~_BytesIn(column, *binds)
    return and_(column.in_(binds), _SameBytesIn(column, *binds))


def exact_order(column: Any) -> Any:
    """An ORDER BY key that orders texts a collation holds equal ('k1' and 'K1' under
    `utf8mb4_general_ci`) by their bytes."""
    return _Bytes(column)


# Where a column's own comparison is already exact (PostgreSQL text under a deterministic
# collation: equal means byte-equal), the byte comparison above only costs time, once per row the
# scope matches; where the column is utf8mb4 on MariaDB, a binary NO PAD collation gives the same
# answer for less. What the columns of a database are is read from its catalog (`probe_statement`,
# `remember_probe`) before the engine runs any statement of the toolset, and read again at most
# `PROBE_SECONDS` later on the engine's next call, so a collation changed while the application
# runs takes effect within that time (the engine's compiled statements are then dropped). A column
# the catalog doesn't vouch for, and every column of an engine not probed, keeps the byte comparison.
PROBE_SECONDS = 60.0
# Per dialect, the (table, column) pairs the probe listed: on PostgreSQL the text columns that may
# fold, on MariaDB the utf8mb4 columns of the connection's database. None: not known.
_LISTED: weakref.WeakKeyDictionary[Dialect, frozenset[tuple[str, str]] | None] = weakref.WeakKeyDictionary()
_PROBED_AT: weakref.WeakKeyDictionary[Dialect, float] = weakref.WeakKeyDictionary()
_EXACT_TYPES = ("text", "varchar", "bpchar", "name")


def probe_statement(dialect: Dialect) -> Any | None:
    """A statement listing (table, column) pairs of the database's text columns (see `_LISTED`),
    when it must run before the engine's next statement; None when it need not."""
    probed = _PROBED_AT.get(dialect)
    if probed is not None and (probed == math.inf or time.monotonic() - probed < PROBE_SECONDS):
        return None
    if dialect.name == "postgresql":
        return _postgresql_probe(dialect)
    if capabilities(dialect).exact_collation is not None:
        columns = table("COLUMNS", column("TABLE_SCHEMA"), column("TABLE_NAME"), column("COLUMN_NAME"),
                        column("CHARACTER_SET_NAME"), schema="information_schema")
        return select(columns.c.TABLE_NAME, columns.c.COLUMN_NAME).where(
            columns.c.TABLE_SCHEMA == func.database(), columns.c.CHARACTER_SET_NAME == "utf8mb4"
        )  # fmt: skip
    _LISTED[dialect] = None  # nothing to learn: the byte comparison stays
    _PROBED_AT[dialect] = math.inf
    return None


def _postgresql_probe(dialect: Dialect) -> Any:
    attribute = table("pg_attribute", column("attrelid"), column("attname"), column("attnum"),
                      column("attisdropped"), column("atttypid"), column("attcollation"), schema="pg_catalog")
    relation = table("pg_class", column("oid"), column("relname"), schema="pg_catalog")
    kind = table("pg_type", column("oid"), column("typname"), column("typcategory"), schema="pg_catalog")
    collation = table("pg_collation", column("oid"), column("collisdeterministic"), schema="pg_catalog")
    folds: ColumnElement[bool] = kind.c.typname.not_in(_EXACT_TYPES)  # citext, a domain, ...: not known exact
    if tuple(getattr(dialect, "server_version_info", None) or (0,)) >= (12,):  # nondeterministic since 12
        folds = or_(folds, collation.c.collisdeterministic.is_(False))
    return (
        select(relation.c.relname, attribute.c.attname)
        .select_from(
            attribute.join(relation, relation.c.oid == attribute.c.attrelid)
            .join(kind, kind.c.oid == attribute.c.atttypid)
            .outerjoin(collation, collation.c.oid == attribute.c.attcollation)
        )
        .where(attribute.c.attnum > 0, not_(attribute.c.attisdropped), kind.c.typcategory == "S", folds)
    )  # fmt: skip


def remember_probe(dialect: Dialect, rows: Sequence[Any] | None) -> bool:
    """Record what `probe_statement` found (None: it failed, keep every byte comparison).

    True when the answer differs from the one before: statements compiled under the old answer
    must then be compiled again (`Engine.clear_compiled_cache`)."""
    found = None if rows is None else frozenset((str(r[0]), str(r[1])) for r in rows)
    changed = dialect in _LISTED and _LISTED[dialect] != found
    _LISTED[dialect] = found
    _PROBED_AT[dialect] = time.monotonic()
    return changed


def _exact_form(dialect: Dialect, expr: Any) -> str | None:
    """How `expr` (a column) compares exactly on this database: "native" (its own `=` is exact),
    a collation name (`expr COLLATE it` is), or None (compare the bytes)."""
    listed = _LISTED.get(dialect)
    owner = getattr(expr, "table", None)
    if listed is None or owner is None or not isinstance(getattr(owner, "name", None), str):
        return None
    collation = capabilities(dialect).exact_collation
    if collation is not None:
        # Only a real table of the connection's database: an alias's name is no table's.
        known = isinstance(owner, Table) and owner.schema is None and (owner.name, expr.name) in listed
        return collation if known else None
    return None if (owner.name, expr.name) in listed else "native"


def _exact_in(dialect: Dialect, col: Any, values: list[Any]) -> ColumnElement[bool] | None:
    """`col IN (values)` compared exactly by the column's own means; None when only bytes do."""
    form = _exact_form(dialect, col)
    if form is None:
        return None
    return col.in_(values) if form == "native" else col.collate(form).in_(values)  # type: ignore[no-any-return]


class _SameBytes(FunctionElement[bool]):
    """`bytes(column) = bytes(value)`, or TRUE where the column's `=` is exact already."""

    inherit_cache = True
    name = "ormai_same_bytes"
    type = sqltypes.Boolean()


@compiles(_SameBytes)
def _compile_same_bytes(element: _SameBytes, compiler: Any, **kw: Any) -> str:
    col, value = element.clauses.clauses
    form = _exact_form(compiler.dialect, col)
    if form == "native":
        exact: Any = true()
    elif form is not None:
        exact = col.collate(form) == value
    else:
        exact = _Bytes(col) == _Bytes(value)
    return str(compiler.process(exact, **kw))


class _SameBytesIn(FunctionElement[bool]):
    """`bytes(column) IN (bytes(v), ...)`, or TRUE where the column's `IN` is exact already."""

    inherit_cache = True
    name = "ormai_same_bytes_in"
    type = sqltypes.Boolean()


@compiles(_SameBytesIn)
def _compile_same_bytes_in(element: _SameBytesIn, compiler: Any, **kw: Any) -> str:
    col, *values = element.clauses.clauses
    form = _exact_form(compiler.dialect, col)
    exact = true() if form == "native" else _exact_in(compiler.dialect, col, values)
    return str(compiler.process(_bytes_in(col, values) if exact is None else exact, **kw))


def _bytes_in(col: Any, values: list[Any]) -> ColumnElement[bool]:
    return _Bytes(col).in_([_Bytes(v) for v in values])


class _BytesIn(FunctionElement[bool]):
    """`bytes(column) IN (bytes(v), ...)`, or `column IN (...)` where that is exact already."""

    inherit_cache = True
    name = "ormai_bytes_in"
    type = sqltypes.Boolean()


@compiles(_BytesIn)
def _compile_bytes_in(element: _BytesIn, compiler: Any, **kw: Any) -> str:
    col, *values = element.clauses.clauses
    exact = _exact_in(compiler.dialect, col, values)
    return str(compiler.process(_bytes_in(col, values) if exact is None else exact, **kw))


def exact_compare(column: Any, op: str, value: Any) -> ColumnElement[bool]:
    """`column <op> value` for `= != < <= > >=`; text is compared by its bytes (code point order
    for UTF-8), never by a collation's folding."""
    if op == "=":
        return exact_equals(column, value)
    if is_text(column):
        left: Any = _Bytes(column)
        right: Any = _Bytes(_bind(column, value))
    else:
        left, right = column, value
    if op == "!=":
        return left != right  # type: ignore[no-any-return]
    if op == "<":
        return left < right  # type: ignore[no-any-return]
    if op == "<=":
        return left <= right  # type: ignore[no-any-return]
    if op == ">":
        return left > right  # type: ignore[no-any-return]
    if op == ">=":
        return left >= right  # type: ignore[no-any-return]
    raise ValueError(op)


# --- ORDER BY ... NULLS LAST ----------------------------------------------------------------


class _NullsLast(FunctionElement[Any]):
    """An ORDER BY item (`col.asc()` / `col.desc()`) with NULLs after every value."""

    inherit_cache = True
    name = "ormai_nulls_last"


@compiles(_NullsLast)
def _compile_nulls_last(element: _NullsLast, compiler: Any, **kw: Any) -> str:
    (order,) = element.clauses.clauses
    if capabilities(compiler.dialect).nulls_last:
        return str(compiler.process(order.nulls_last(), **kw))
    # `x IS NULL` is 0 for values and 1 for NULLs: NULLs sort after every value, either direction.
    column = order.element
    return f"{compiler.process(column.is_(None), **kw)}, {compiler.process(order, **kw)}"


def nulls_last(order: Any) -> Any:
    """`order` (a `col.asc()` or `col.desc()`) with NULLs last on every database."""
    return _NullsLast(order)
