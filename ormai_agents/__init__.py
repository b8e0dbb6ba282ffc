"""ormai-agents: policy-scoped, audited database tools for LangChain and LlamaIndex agents.

The framework adapters live in `ormai_agents.langchain` and `ormai_agents.llamaindex` and are
imported only when used: importing this package pulls in neither framework.
"""

from ormai_agents._results import page_records
from ormai_agents.core import (
    AccessDeniedError,
    AggregateResult,
    ApprovalError,
    ApprovalRequiredError,
    AuditUnavailableError,
    CallTimeoutError,
    DatabaseError,
    FieldNotAllowedError,
    GetResult,
    IntegrityConstraintError,
    InvalidCursorError,
    ModelNotAllowedError,
    OrmAIError,
    PolicyError,
    Principal,
    QueryResult,
    RecordNotFoundError,
    RunContext,
    SchemaResult,
    TransientDatabaseError,
    ValidationError,
    WriteNotAllowedError,
    WriteOutcomeUnknownError,
    WriteResult,
)
from ormai_agents.policy import (
    FieldAction,
    FieldPolicy,
    ModelPolicy,
    Policy,
    RowPolicy,
    WriteAction,
    WritePolicy,
)
from ormai_agents.toolset import Toolset

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "AggregateResult",
    "ApprovalError",
    "ApprovalRequiredError",
    "AuditUnavailableError",
    "CallTimeoutError",
    "DatabaseError",
    "FieldAction",
    "FieldNotAllowedError",
    "FieldPolicy",
    "GetResult",
    "IntegrityConstraintError",
    "InvalidCursorError",
    "ModelNotAllowedError",
    "ModelPolicy",
    "OrmAIError",
    "Policy",
    "PolicyError",
    "Principal",
    "QueryResult",
    "RecordNotFoundError",
    "RowPolicy",
    "RunContext",
    "SchemaResult",
    "Toolset",
    "TransientDatabaseError",
    "ValidationError",
    "WriteAction",
    "WriteNotAllowedError",
    "WriteOutcomeUnknownError",
    "WritePolicy",
    "WriteResult",
    "page_records",
]
