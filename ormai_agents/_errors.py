"""Every error ormai-agents raises.

Messages are written for an LLM to act on: they say what is wrong and what may be used instead.
They never carry SQL, driver text, stack traces, denied field names or values from rows outside
the caller's scope. Database exceptions are translated into these classes in one place
(`ormai_agents._dberrors`).
"""

from __future__ import annotations

from typing import Any, ClassVar


class OrmAIError(Exception):
    """Base class: every error the toolset raises. `.code` is stable and machine-readable."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Only values safe to show the agent (allowed names, limits) go into details.
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """The error as the agent sees it."""
        out: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out


class ValidationError(OrmAIError):
    """The agent's input is malformed: wrong type, unknown option, bad operator, bad limit."""

    code = "validation_error"


class InvalidCursorError(ValidationError):
    """A pagination cursor was altered, expired, or belongs to another query or principal."""

    code = "invalid_cursor"


class ModelNotAllowedError(OrmAIError):
    """The model does not exist for this agent (unknown, or not allowed by the policy)."""

    code = "model_not_allowed"


class FieldNotAllowedError(OrmAIError):
    """A field is unknown, denied, or not usable for the requested purpose (filter, sort, ...)."""

    code = "field_not_allowed"


class RecordNotFoundError(OrmAIError):
    """No row with that id is visible: it does not exist or lies outside the caller's scope."""

    code = "not_found"


class AccessDeniedError(OrmAIError):
    """The call is refused for this principal, e.g. a scoping value is missing or empty."""

    code = "access_denied"


class WriteNotAllowedError(OrmAIError):
    """The write policy does not allow this operation on this model."""

    code = "write_not_allowed"


class ApprovalRequiredError(OrmAIError):
    """The write waits for a human's approval and was not executed; `.approval_id` names the request."""

    code = "approval_required"

    def __init__(self, message: str, *, approval_id: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details={**(details or {}), "approval_id": approval_id})
        self.approval_id = approval_id


class ApprovalError(OrmAIError):
    """An approval can't be executed: unknown, not approved, already used, altered, or not the caller's."""

    code = "approval_invalid"


class AuditUnavailableError(OrmAIError):
    """A write was rolled back because its audit record could not be stored."""

    code = "audit_unavailable"


class PolicyError(OrmAIError):
    """The policy itself is wrong (raised to the host application when a Toolset is built)."""

    code = "policy_error"


class DatabaseError(OrmAIError):
    """The database failed the statement; the driver's message is withheld."""

    code = "database_error"


class TransientDatabaseError(DatabaseError):
    """A retryable database failure (dropped connection, deadlock, serialization failure)."""

    code = "database_unavailable"


class WriteOutcomeUnknownError(DatabaseError):
    """The connection failed while a write was being committed: it may or may not have been saved."""

    code = "write_outcome_unknown"


class CallTimeoutError(DatabaseError):
    """The call's statements ran past the policy's time budget (`call_timeout_seconds`) and were interrupted."""

    code = "timeout"


class IntegrityConstraintError(DatabaseError):
    """A write broke a database constraint (unique, foreign key, not null, check)."""

    code = "constraint_violation"


__all__ = [
    "AccessDeniedError",
    "ApprovalError",
    "ApprovalRequiredError",
    "AuditUnavailableError",
    "CallTimeoutError",
    "DatabaseError",
    "FieldNotAllowedError",
    "IntegrityConstraintError",
    "InvalidCursorError",
    "ModelNotAllowedError",
    "OrmAIError",
    "PolicyError",
    "RecordNotFoundError",
    "TransientDatabaseError",
    "ValidationError",
    "WriteNotAllowedError",
    "WriteOutcomeUnknownError",
]
