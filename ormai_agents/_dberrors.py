"""The one boundary where database and driver exceptions become ormai-agents errors.

Nothing the driver says (SQL, bound parameters, constraint names, other rows' values) crosses
it: the agent gets a generic message, the host's log gets the original exception.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import exc as sa_exc
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ormai_agents._errors import (
    DatabaseError,
    IntegrityConstraintError,
    OrmAIError,
    TransientDatabaseError,
    ValidationError,
)

log = logging.getLogger("ormai_agents")

# SQLSTATEs worth retrying: serialization failure, deadlock, and the connection-exception class.
_TRANSIENT_SQLSTATES = {"40001", "40P01", "57P01", "57P02", "57P03", "08000", "08003", "08006", "08001", "08004"}
_TRANSIENT_SQLITE = ("database is locked", "database table is locked")
_INSUFFICIENT_PRIVILEGE = "42501"
_QUERY_CANCELED = "57014"  # statement_timeout

# MySQL and MariaDB report numeric error codes (PyMySQL, aiomysql and asyncmy alike: args[0]).
_MYSQL_DRIVERS = ("pymysql", "aiomysql", "asyncmy", "MySQLdb", "mysql", "mariadb")
# Deadlock (the server rolled the transaction back), lock wait timeout, and the lost connection
# family: server gone away, lost during query, can't connect, killed (MariaDB), idle disconnect.
_TRANSIENT_MYSQL = {1213, 1205, 2006, 2013, 2003, 1927, 4031}
_MYSQL_CONSTRAINTS = {
    1062: "unique", 1586: "unique", 1169: "unique",
    1451: "foreign_key", 1452: "foreign_key", 1216: "foreign_key", 1217: "foreign_key",
    1048: "not_null", 1364: "not_null",
    3819: "check", 4025: "check",
}  # fmt: skip
_MYSQL_TIMEOUTS = {1969, 3024}  # max_statement_time (MariaDB), max_execution_time (MySQL)
_MYSQL_PRIVILEGE = {1142, 1143, 1227}
# A value the column can't hold: the agent's input, so a validation error it can act on.
_BAD_VALUE_MESSAGES = {
    "too_long": "A value is longer than its field allows. Nothing was written; shorten it.",
    "out_of_range": "A number is out of the range its field allows. Nothing was written.",
    "bad_value": (
        "A value can't be stored in or compared with its field (out of its range, a wrong type, or "
        "characters the field's character set can't hold). Nothing was written."
    ),
}
# (A failed MySQL statement leaves the transaction usable, so no rollback is owed on these.)
_MYSQL_BAD_VALUES = {1406: "too_long", 1264: "out_of_range", 1366: "bad_value", 1292: "bad_value"}
# "Illegal mix of collations": a bound value holds characters the column's character set can't
# (an emoji against a latin1 or utf8mb3 column). The agent's input when a bound value is a side
# (COERCIBLE, or an IN list, whose 1271 names no side); between two columns it is the schema's.
_MYSQL_MIXED_COLLATIONS = {1267, 1270, 1271}
# PostgreSQL's data exceptions on a bound value: the server's (psycopg's typed parameters) or
# asyncpg's own 22000, raised before sending a value its column type can't encode (an int beyond
# int4, a decimal beyond numeric). Not 22P02 (text cast to a type): that is a policy's cast of a
# principal value under row-level security, the host's to fix, not the agent's.
_PG_BAD_VALUES = {"22001": "too_long", "22003": "out_of_range", "22000": "bad_value", "22021": "bad_value"}


def _sqlstate(error: BaseException | None) -> str | None:
    for attr in ("sqlstate", "pgcode"):
        value = getattr(error, attr, None)
        if isinstance(value, str):
            return value
    return None


def _mysql_code(error: BaseException | None) -> int | None:
    """The MySQL/MariaDB error number of a driver exception, or None for other drivers."""
    if error is None or type(error).__module__.split(".")[0] not in _MYSQL_DRIVERS:
        return None
    args = getattr(error, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _mysql_bad_value(code: int, error: BaseException | None) -> str | None:
    if code in _MYSQL_MIXED_COLLATIONS:
        args: tuple[Any, ...] = getattr(error, "args", ())
        text = str(args[1]) if len(args) > 1 else ""
        return "bad_value" if "COERCIBLE" in text or "operation 'in'" in text else None
    return _MYSQL_BAD_VALUES.get(code)


def is_transient(error: sa_exc.DBAPIError) -> bool:
    """True for failures where the same statement may succeed if run again."""
    if error.connection_invalidated:
        return True
    orig = error.orig
    state = _sqlstate(orig) or _sqlstate(getattr(orig, "__cause__", None))
    if state in _TRANSIENT_SQLSTATES:
        return True
    if _mysql_code(orig) in _TRANSIENT_MYSQL:
        return True
    if isinstance(error, sa_exc.OperationalError):
        text = str(orig).lower()
        return any(marker in text for marker in _TRANSIENT_SQLITE)
    return False


_CONSTRAINT_KINDS = {"23505": "unique", "23503": "foreign_key", "23502": "not_null", "23514": "check"}
_SQLITE_CONSTRAINTS = (
    ("unique constraint", "unique"),
    ("foreign key constraint", "foreign_key"),
    ("not null constraint", "not_null"),
    ("check constraint", "check"),
)
_CONSTRAINT_MESSAGES = {
    "unique": "A record with the same value already exists (a unique constraint).",
    "foreign_key": (
        "The change refers to a record that does not exist, or removes one that other records still refer to."
    ),
    "not_null": "A required value is missing.",
    "check": "A value breaks a rule of the database (a check constraint).",
    "": (
        "The change conflicts with existing data or a database constraint (a duplicate value, "
        "a reference to a record that does not exist, or a missing required value)."
    ),
}


def _constraint_kind(error: sa_exc.DBAPIError) -> str | None:
    orig = error.orig
    state = _sqlstate(orig) or _sqlstate(getattr(orig, "__cause__", None))
    if state in _CONSTRAINT_KINDS:
        return _CONSTRAINT_KINDS[state]
    code = _mysql_code(orig)
    if code is not None:
        return _MYSQL_CONSTRAINTS.get(code)
    text = str(orig).lower()
    return next((kind for marker, kind in _SQLITE_CONSTRAINTS if marker in text), None)


@contextmanager
def map_db_errors(action: str = "run the statement") -> Iterator[None]:
    """Translate SQLAlchemy/driver exceptions raised inside the block into OrmAIErrors."""
    try:
        yield
    except OrmAIError:
        raise
    except sa_exc.IntegrityError as error:
        log.info("ormai_agents: integrity error while trying to %s", action, exc_info=error)
        kind = _constraint_kind(error)
        # The kind of constraint only: never its name, its columns or the conflicting values.
        raise IntegrityConstraintError(
            _CONSTRAINT_MESSAGES.get(kind or "", _CONSTRAINT_MESSAGES[""]) + " Nothing was written.",
            details={"constraint": kind} if kind else None,
        ) from None
    except sa_exc.DBAPIError as error:
        code = _mysql_code(error.orig)
        state = _sqlstate(error.orig)
        if code in _MYSQL_CONSTRAINTS:  # MySQL drivers report some of these as OperationalError
            kind = _MYSQL_CONSTRAINTS[code]
            log.info("ormai_agents: integrity error while trying to %s", action, exc_info=error)
            raise IntegrityConstraintError(
                _CONSTRAINT_MESSAGES[kind] + " Nothing was written.", details={"constraint": kind}
            ) from None
        bad_value = _mysql_bad_value(code, error.orig) if code is not None else _PG_BAD_VALUES.get(state or "")
        if bad_value is not None:
            log.info("ormai_agents: a value did not fit its column while trying to %s", action, exc_info=error)
            raise ValidationError(_BAD_VALUE_MESSAGES[bad_value]) from None
        if code in _MYSQL_TIMEOUTS or state == _QUERY_CANCELED:
            log.warning(
                "ormai_agents: a statement ran out of its time budget while trying to %s", action, exc_info=error
            )
            raise DatabaseError(
                "The query took longer than it is allowed to. Narrow it with filters or a smaller limit."
            ) from None
        if is_transient(error):
            log.warning("ormai_agents: transient database error while trying to %s", action, exc_info=error)
            raise TransientDatabaseError(
                "The database is temporarily unavailable. Try the same call again shortly."
            ) from None
        if state == _INSUFFICIENT_PRIVILEGE or code in _MYSQL_PRIVILEGE:
            # Also a row-level security WITH CHECK violation: the row would leave the user's scope.
            log.warning("ormai_agents: the database refused to %s for this user", action, exc_info=error)
            raise DatabaseError(
                "The database refused this request for the current user (a permission or row-level "
                "security rule: the record would be outside what the user may access). Nothing was written."
            ) from None
        log.error("ormai_agents: database error while trying to %s", action, exc_info=error)
        raise DatabaseError("The database could not complete this request.") from None
    except sa_exc.SQLAlchemyError as error:
        log.error("ormai_agents: SQLAlchemy error while trying to %s", action, exc_info=error)
        raise DatabaseError("The database could not complete this request.") from None


def retrying(attempts: int, *, multiplier: float = 0.05) -> AsyncRetrying:
    """Tenacity's loop for retrying transient database errors: `attempts` tries, short
    exponential waits (`multiplier` seconds after the first failure, then doubling, at most one
    second), the last error re-raised. Callers decide where a retry is safe."""
    return AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=multiplier, max=1.0),
        retry=retry_if_exception_type(TransientDatabaseError),
        reraise=True,
    )
