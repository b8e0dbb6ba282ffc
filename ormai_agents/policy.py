"""The policy a host application declares: which models, fields, rows and writes an agent may use.

Every class forbids unknown arguments, so a misspelt safeguard fails loudly at construction
instead of silently doing nothing. Everything is denied unless the policy says otherwise.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ormai_agents._paths import parse_principal_path

__all__ = [
    "FieldAction",
    "FieldPolicy",
    "ModelPolicy",
    "Policy",
    "RowPolicy",
    "WriteAction",
    "WritePolicy",
]


class FieldAction(str, Enum):
    """What the agent may do with a field's value."""

    Allow = "allow"  # readable, filterable, sortable, groupable, writable where writes are allowed
    Deny = "deny"  # absent from every result, schema and error
    Mask = "mask"  # returned masked; can't be filtered, sorted, grouped, aggregated or written
    Hash = "hash"  # returned as a keyed HMAC; same restrictions as Mask


class WriteAction(str, Enum):
    """Whether a write operation runs, is refused, or waits for a human's approval."""

    Allow = "allow"
    Deny = "deny"
    RequireApproval = "require_approval"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class FieldPolicy(_Strict):
    """The action for one field. `mask_show_last` keeps that many trailing characters visible."""

    action: FieldAction = FieldAction.Allow
    mask_show_last: int = Field(default=0, ge=0, le=16)
    description: str = ""


def _field_policy(value: Any) -> Any:
    # Shorthand: fields={"email": FieldAction.Mask} or {"email": "mask"}.
    if isinstance(value, (FieldAction, str)):
        return {"action": value}
    return value


class RowPolicy(_Strict):
    """A condition on rows (see the condition language in the README).

    - `mode="restrict"`: ANDed to every statement on the model.
    - `mode="permit"`: rows matching it are visible in addition to the scoped rows.
    - `bypass=True`: the condition refers only to the principal; when it holds, the model's
      scoping is lifted for that call (restrict policies still apply).
    """

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    condition: str = Field(min_length=1, max_length=2000)
    description: str = ""
    bypass: bool = False
    mode: Literal["restrict", "permit"] = "restrict"
    # A restrict condition relating a field the agent writes to one it can't read is refused when
    # the toolset is built: every write's check would reveal where the hidden value lies. True
    # accepts that for this policy.
    accept_write_oracle: bool = False

    def __init__(self, name: Any = None, condition: Any = None, /, **data: Any) -> None:
        # Allow RowPolicy("name", "condition", ...) as well as keywords.
        if name is not None:
            data.setdefault("name", name)
        if condition is not None:
            data.setdefault("condition", condition)
        super().__init__(**data)

    @model_validator(mode="after")
    def _bypass_is_not_permit(self) -> RowPolicy:
        if self.bypass and self.mode == "permit":
            raise ValueError("a bypass policy can't also be mode='permit'")
        return self


class WritePolicy(_Strict):
    """Which writes the agent may perform on a model, and what the server sets itself."""

    create: WriteAction = WriteAction.Deny
    update: WriteAction = WriteAction.Deny
    delete: WriteAction = WriteAction.Deny
    bulk_update: WriteAction = WriteAction.Deny
    # field -> "principal.<path>", "now()" or a literal; applied by the server on create.
    auto_set: dict[str, Any] = Field(default_factory=dict)
    # field -> same forms; applied by the server on update and bulk_update.
    auto_set_on_update: dict[str, Any] = Field(default_factory=dict)
    immutable_fields: list[str] = Field(default_factory=list)
    required_fields: list[str] = Field(default_factory=list)
    max_affected_rows: int = Field(default=10, ge=1, le=100_000)

    @field_validator("auto_set", "auto_set_on_update")
    @classmethod
    def _check_auto_set(cls, value: dict[str, Any]) -> dict[str, Any]:
        for source in value.values():
            if isinstance(source, str) and source.startswith("principal"):
                parse_principal_path(source)
        return value


class ModelPolicy(_Strict):
    """The policy of one mapped class, named by its class name in `Policy.models`."""

    allowed: bool = True
    fields: dict[str, FieldPolicy] = Field(default_factory=dict)
    # Action for mapped columns absent from `fields`.
    default_field_action: FieldAction = FieldAction.Deny
    # column -> "principal.<path>"; every statement carries column = value (IN for lists).
    scoping: dict[str, str] = Field(default_factory=dict)
    row_policies: list[RowPolicy] = Field(default_factory=list)
    write_policy: WritePolicy = Field(default_factory=WritePolicy)
    # Most rows one query returns; None uses Policy.max_rows.
    max_rows: int | None = Field(default=None, ge=1, le=10_000)
    description: str = ""

    @field_validator("fields", mode="before")
    @classmethod
    def _shorthand_fields(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _field_policy(v) for k, v in value.items()}
        return value

    @field_validator("scoping")
    @classmethod
    def _check_scoping(cls, value: dict[str, str]) -> dict[str, str]:
        for path in value.values():
            parse_principal_path(path)
        return value

    @model_validator(mode="after")
    def _unique_row_policy_names(self) -> ModelPolicy:
        names = [rp.name for rp in self.row_policies]
        if len(names) != len(set(names)):
            raise ValueError("row policy names must be unique within a model")
        return self


class Policy(_Strict):
    """The whole policy: models by mapped class name. Models not listed don't exist for agents."""

    models: dict[str, ModelPolicy] = Field(default_factory=dict)
    # Default most rows per query, for models that don't set max_rows.
    max_rows: int = Field(default=100, ge=1, le=10_000)
    # How many relationship hops `include` may follow ("customer.orders" is two).
    max_include_depth: int = Field(default=1, ge=0, le=5)
    # Bounds on every argument of every call, checked before anything else (a refusal is a
    # ValidationError, and audited): nesting depth, entries of one list or object, characters of
    # one string, and values in all of a call's arguments together.
    max_argument_depth: int = Field(default=16, ge=2, le=64)
    max_list_length: int = Field(default=1000, ge=1, le=100_000)
    max_string_length: int = Field(default=65_536, ge=64, le=10_000_000)
    max_argument_values: int = Field(default=10_000, ge=10, le=1_000_000)
    # Most characters of a text filter value (also bounded by the column's own length).
    max_filter_text_length: int = Field(default=1000, ge=1, le=1_000_000)
    # Most related rows one query or get may return through `include`, over all its levels.
    max_include_rows: int = Field(default=1000, ge=1, le=1_000_000)
    # Time budget of one call's statements, in seconds; None for no budget. A statement still
    # running when it is spent is interrupted and the call fails with `CallTimeoutError`.
    call_timeout_seconds: float | None = Field(default=30.0, gt=0, le=86_400)
    # Input keys whose values never reach an audit record (matched case-insensitively, as
    # substrings), on top of values on fields that are not plainly allowed.
    redact_keys: list[str] = Field(
        default_factory=lambda: ["password", "secret", "token", "api_key", "apikey", "credential"]
    )
