"""Principal, RunContext, the error classes and the result classes."""

from ormai_agents._context import Principal, RunContext
from ormai_agents._errors import (
    AccessDeniedError,
    ApprovalError,
    ApprovalRequiredError,
    AuditUnavailableError,
    DatabaseError,
    FieldNotAllowedError,
    IntegrityConstraintError,
    InvalidCursorError,
    ModelNotAllowedError,
    OrmAIError,
    PolicyError,
    RecordNotFoundError,
    TransientDatabaseError,
    ValidationError,
    WriteNotAllowedError,
    WriteOutcomeUnknownError,
)
from ormai_agents._results import AggregateResult, GetResult, QueryResult, SchemaResult, WriteResult

__all__ = [
    "AccessDeniedError",
    "ApprovalError",
    "ApprovalRequiredError",
    "AuditUnavailableError",
    "AggregateResult",
    "DatabaseError",
    "FieldNotAllowedError",
    "GetResult",
    "IntegrityConstraintError",
    "InvalidCursorError",
    "ModelNotAllowedError",
    "OrmAIError",
    "PolicyError",
    "Principal",
    "QueryResult",
    "RecordNotFoundError",
    "RunContext",
    "SchemaResult",
    "TransientDatabaseError",
    "ValidationError",
    "WriteNotAllowedError",
    "WriteOutcomeUnknownError",
    "WriteResult",
]
