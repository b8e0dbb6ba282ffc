"""What reads and writes need of a toolset, and nothing else.

`Runtime` is built once by `Toolset` from the models and the policy: the compiled plans, the keys
derived from the secret (cursor signatures, hashed fields, approvals), the stores, and the few
per-principal caches. The read path (`ormai_agents._reads`), the write path
(`ormai_agents._writes`) and the call (`ormai_agents._call`) are given this object; none of them
reaches into `Toolset`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

from ormai_agents import _inputs
from ormai_agents._context import Principal
from ormai_agents._cursor import CursorCodec, derive_key
from ormai_agents._errors import ModelNotAllowedError
from ormai_agents._plan import ModelPlan, build_plans
from ormai_agents._redact import redact_inputs
from ormai_agents._rls_settings import settings_paths
from ormai_agents._write_plan import WritePlan, build_write_plans
from ormai_agents.approvals import ApprovalGate, ApprovalStore, MemoryApprovalStore
from ormai_agents.policy import FieldAction, Policy

if TYPE_CHECKING:
    from ormai_agents.audit import AuditStore

Shaper = Callable[[Sequence[Any]], dict[str, Any]]
RowsShaper = Callable[[Sequence[Sequence[Any]]], list[dict[str, Any]]]
_CACHE_LIMIT = 4096


class Runtime:
    """The compiled policy and the keys and stores of one toolset."""

    def __init__(
        self,
        models: Any,
        policy: Policy,
        *,
        audit_store: AuditStore | None,
        secret_key: bytes | str | None,
        cursor_ttl_seconds: int,
        rls: bool,
        approval_store: ApprovalStore | None,
    ) -> None:
        self.policy = policy
        self.audit_store = audit_store
        self.plans: dict[str, ModelPlan] = build_plans(models, policy)
        self.write_plans: dict[str, WritePlan] = build_write_plans(self.plans, build_plans(models, policy, hidden=True))
        # Without a store, approvals live in this process's memory (see ormai_agents.approvals).
        self.approval_store: ApprovalStore = approval_store if approval_store is not None else MemoryApprovalStore()
        if secret_key is None:
            secret = os.urandom(32)
        else:
            secret = secret_key.encode() if isinstance(secret_key, str) else bytes(secret_key)
            if len(secret) < 16:
                raise ValueError("secret_key must be at least 16 bytes")
        self.cursors = CursorCodec(secret, cursor_ttl_seconds)
        self.approvals = ApprovalGate(self.approval_store, derive_key(secret, "approval"))
        self.bounds = _inputs.Bounds.of(policy)
        self.redact_keys = tuple(policy.redact_keys)
        if not isinstance(rls, bool):
            raise TypeError("rls must be True or False")
        self.rls_paths: list[tuple[str, ...]] | None = None
        if rls:
            self.rls_paths = settings_paths(self.plans)
        self._hash_key = derive_key(secret, "hash-field")
        self._principal_ids: dict[Principal, str] = {}
        self._shapers: dict[tuple[str, tuple[str, ...]], RowsShaper] = {}
        self._statements: dict[Any, Any] = {}

    def statement(self, key: Any, build: Callable[[], Any]) -> Any:
        """The statement cached under `key`, built by `build` the first time.

        Building a Core statement and its cache key costs more than running a small one, so
        reads keep theirs per principal and shape (model, fields, filter fields and operators,
        order, cursor position, includes), with every value the agent sends as a named bind
        parameter. The key holds the principal (its scope is part of the statement) and every
        choice that changes the SQL; values never do."""
        stmt = self._statements.get(key)
        if stmt is None:
            stmt = build()
            if len(self._statements) > _CACHE_LIMIT:
                self._statements.clear()
            self._statements[key] = stmt
        return stmt

    def plan(self, model: Any) -> ModelPlan:
        """The compiled plan of a model the agent may use; ModelNotAllowedError otherwise."""
        plan = self.plans.get(model) if isinstance(model, str) else None
        if plan is None:
            raise ModelNotAllowedError(
                f"That model is not available. Models you can use: {', '.join(self.plans) or '(none)'}",
                details={"allowed_models": list(self.plans)},
            )
        return plan

    def redact(self, plan: ModelPlan | None, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The inputs as they may be logged (see `ormai_agents._redact.redact_inputs`)."""
        return redact_inputs(plan, inputs, self.redact_keys)

    def binding(self, principal: Principal, plan: ModelPlan, filters: list[Any], order: list[Any]) -> str:
        """What a cursor is bound to: the principal, the model, the filters and the order."""
        who = self._principal_ids.get(principal)
        if who is None:
            who = hashlib.sha256(_inputs.canonical(principal.to_dict()).encode()).hexdigest()
            if len(self._principal_ids) > _CACHE_LIMIT:
                self._principal_ids.clear()
            self._principal_ids[principal] = who
        return who + _inputs.canonical([plan.name, filters, order])

    def shaper(self, plan: ModelPlan, names: list[str]) -> Shaper:
        """A function turning a result row into the agent's dict, masking and hashing as needed."""
        shaper = self.rows_shaper(plan, names)

        def one(row: Sequence[Any]) -> dict[str, Any]:
            return shaper([row])[0]

        return one

    def rows_shaper(self, plan: ModelPlan, names: list[str]) -> RowsShaper:
        """A function turning result rows into the agent's dicts, masking and hashing as needed
        (columns past `names`, such as hidden sort or join keys, are left out)."""
        key = (plan.name, tuple(names))
        shaper = self._shapers.get(key)
        if shaper is None:
            shaper = self._make_shaper(plan, names)
            if len(self._shapers) > _CACHE_LIMIT:
                self._shapers.clear()
            self._shapers[key] = shaper
        return shaper

    def _make_shaper(self, plan: ModelPlan, names: list[str]) -> RowsShaper:
        transforms = [
            (i, _mask(plan.fields[n].mask_show_last) if plan.fields[n].action is FieldAction.Mask else self.hash_value)
            for i, n in enumerate(names)
            if plan.fields[n].action in (FieldAction.Mask, FieldAction.Hash)
        ]
        width = len(names)
        keys = tuple(names)
        if not transforms:

            def plain(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
                # zip stops at the names: hidden key columns stay out. map over zip, without a
                # keyword argument, is the cheapest way CPython builds these dicts.
                return list(map(dict, map(zip, repeat(keys), rows)))

            return plain

        def transformed(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
            out = []
            for row in rows:
                values = list(row[:width])
                for i, fn in transforms:
                    values[i] = fn(values[i])
                out.append(dict(zip(keys, values, strict=True)))
            return out

        return transformed

    def hash_value(self, value: Any) -> str | None:
        """A hashed field's value as the agent sees it: a keyed HMAC, stable per secret."""
        if value is None:
            return None
        return hmac.new(self._hash_key, str(value).encode(), hashlib.sha256).hexdigest()[:32]


def _mask(show_last: int) -> Callable[[Any], Any]:
    def mask(value: Any) -> Any:
        if value is None:
            return None
        text = str(value)
        tail = text[-show_last:] if show_last and len(text) > show_last * 2 else ""
        return "****" + tail

    return mask


__all__ = ["RowsShaper", "Runtime", "Shaper"]
