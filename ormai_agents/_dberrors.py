"""The one boundary where database and driver exceptions become ormai-agents errors.

Nothing the driver says (SQL, bound parameters, constraint names, other rows' values) crosses
it: the agent gets a generic message, the host's log gets the original exception.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ormai_agents._errors import (
    DatabaseError,
    IntegrityConstraintError,
    OrmAIError,
    TransientDatabaseError,
)

log = logging.getLogger("ormai_agents")

# SQLSTATEs worth retrying: serialization failure, deadlock, and the connection-exception class.
_TRANSIENT_SQLSTATES = {"40001", "40P01", "57P01", "57P02", "57P03", "08000", "08003", "08006", "08001", "08004"}
_TRANSIENT_SQLITE = ("database is locked", "database table is locked")
_INSUFFICIENT_PRIVILEGE = "42501"


def _sqlstate(error: BaseException | None) -> str | None:
    for attr in ("sqlstate", "pgcode"):
        value = getattr(error, attr, None)
        if isinstance(value, str):
            return value
    return None


def is_transient(error: sa_exc.DBAPIError) -> bool:
    """True for failures where the same statement may succeed if run again."""
    if error.connection_invalidated:
        return True
    orig = error.orig
    state = _sqlstate(orig) or _sqlstate(getattr(orig, "__cause__", None))
    if state in _TRANSIENT_SQLSTATES:
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
    "foreign_key": "The change refers to a record that does not exist, or removes one that other records still refer to.",
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
        if is_transient(error):
            log.warning("ormai_agents: transient database error while trying to %s", action, exc_info=error)
            raise TransientDatabaseError(
                "The database is temporarily unavailable. Try the same call again shortly."
            ) from None
        if _sqlstate(error.orig) == _INSUFFICIENT_PRIVILEGE:
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


def retrying(attempts: int) -> AsyncRetrying:
    """Tenacity's loop for retrying transient database errors: `attempts` tries, short
    exponential waits, the last error re-raised. Callers decide where a retry is safe."""
    return AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.05, max=1.0),
        retry=retry_if_exception_type(TransientDatabaseError),
        reraise=True,
    )
