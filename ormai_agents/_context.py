"""Who is calling (`Principal`) and with which database session (`RunContext`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from ormai_agents._db import HANDLE_TYPES

if TYPE_CHECKING:
    from ormai_agents.audit import AuditRecord

_MISSING = object()


class FrozenDict(Mapping[str, Any]):
    """A read-only, hashable mapping; nested dicts and lists are frozen too."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data = {str(k): _freeze(v) for k, v in (data or {}).items()}
        self._hash: int | None = None

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenDict(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(_freeze(v) for v in value)
    return value


def _typed(value: Any) -> Any:
    """`value` with the type of every part in it, so `True`, `1` and `1.0` stay apart."""
    if isinstance(value, Mapping):
        return ("map", frozenset((k, _typed(v)) for k, v in value.items()))
    if isinstance(value, tuple):
        return ("seq", tuple(_typed(v) for v in value))
    if isinstance(value, frozenset):
        return ("set", frozenset(_typed(v) for v in value))
    return (type(value), value)


def _check_id(name: str, value: Any) -> None:
    # bool is an int and 1.0 == 1: either would share caches, and a scope, with another tenant.
    if value is not None and (type(value) is not str and type(value) is not int):
        raise TypeError(f"Principal.{name} must be a str or an int (or None), not {type(value).__name__}")


@dataclass(frozen=True, slots=True, eq=False)
class Principal:
    """The identity a tool call runs as. Built by the host application, never by the agent.

    Frozen and hashable: `roles` becomes a tuple and `metadata` a read-only mapping, so a
    principal can't be changed after the tools were bound to it. `tenant_id` and `user_id` are
    a str or an int (never a bool, a float or a container), `roles` are strings. Two principals
    are equal only when their values are equal *and* of the same types, so every cache keyed by
    a principal keeps `True`, `1` and `1.0` apart.
    """

    tenant_id: Any = None
    user_id: Any = None
    roles: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=FrozenDict)
    _key: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _check_id("tenant_id", self.tenant_id)
        _check_id("user_id", self.user_id)
        roles = self.roles
        if isinstance(roles, str):
            roles = (roles,)
        roles = tuple(roles or ())
        if not all(type(r) is str for r in roles):
            raise TypeError("Principal.roles must be strings")
        object.__setattr__(self, "roles", roles)
        if not isinstance(self.metadata, FrozenDict):
            if not isinstance(self.metadata or {}, Mapping):
                raise TypeError("Principal.metadata must be a mapping")
            object.__setattr__(self, "metadata", FrozenDict(self.metadata or {}))
        key = (_typed(self.tenant_id), _typed(self.user_id), roles, _typed(self.metadata))
        object.__setattr__(self, "_key", key)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Principal):
            return NotImplemented
        return bool(self._key == other._key)

    def __hash__(self) -> int:
        return hash(self._key)

    def resolve(self, path: tuple[str, ...]) -> Any:
        """The value at a parsed `principal.<path>`, or None when it is absent.

        `path` omits the leading `principal`: ("tenant_id",), ("metadata", "org", "id").
        """
        head = path[0]
        if head == "metadata":
            value: Any = self.metadata
            for key in path[1:]:
                if not isinstance(value, Mapping):
                    return None
                value = value.get(key, _MISSING)
                if value is _MISSING:
                    return None
            return value
        if len(path) != 1:
            return None
        return getattr(self, head, None) if head in ("tenant_id", "user_id", "roles") else None

    def to_dict(self) -> dict[str, Any]:
        """A plain representation (for logs and audit records)."""
        return {
            "tenant_id": self.tenant_id,
            "user_id": self.user_id,
            "roles": list(self.roles),
            "metadata": _thaw(self.metadata),
        }


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


DB = Session | AsyncSession | Connection | AsyncConnection
AuditSink = Callable[["AuditRecord"], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class RunContext:
    """One tool call's principal and database handle.

    `db` is a SQLAlchemy `Session` or `AsyncSession` (a `Connection` or `AsyncConnection` works
    too). The toolset runs its statements in that handle's current transaction.

    `on_audit`, when given, is called (and awaited if it returns an awaitable) with the audit
    record of every toolset call made with this context, after the toolset's own audit store
    wrote it. Framework adapters use it to forward records to their tracing; it is an observer:
    an exception it raises is logged and never changes the call's outcome.
    """

    principal: Principal
    db: DB
    request_id: str | None = None
    on_audit: AuditSink | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.principal, Principal):
            raise TypeError("RunContext.principal must be an ormai_agents.Principal")
        if not isinstance(self.db, HANDLE_TYPES):
            raise TypeError(
                "RunContext.db must be a SQLAlchemy Session, AsyncSession, Connection or AsyncConnection"
            )
