"""Opaque keyset cursors, authenticated with a key derived from the toolset secret.

A cursor holds the sort-key values of the last row of a page and when it was made. Those values
are all plainly readable fields (rows are ordered and tie-broken only by such fields: see
`ModelPlan.tiebreak`), so the cursor tells the agent nothing it could not read, and it is signed,
not encrypted. The MAC covers the values together with a fingerprint of the query the cursor
belongs to (principal, model, filters and order), which is not stored in the cursor: any change,
or use by another principal or with another query, fails the check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from ormai_agents._errors import InvalidCursorError

_TAG = 16
_MAX_CURSOR = 8192
_INVALID = "The cursor is invalid or expired, or belongs to a different query. Repeat the query without a cursor."


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A key for one purpose ("cursor-mac", "hash-field", ...) from the toolset secret."""
    return hmac.new(secret, b"ormai-agents:" + purpose.encode(), hashlib.sha256).digest()


class CursorCodec:
    """Seals and opens cursors for one toolset."""

    def __init__(self, secret: bytes, ttl_seconds: int) -> None:
        self._mac = derive_key(secret, "cursor-mac")
        self._ttl = ttl_seconds

    def seal(self, binding: str, values: list[Any]) -> str:
        body = json.dumps({"v": values, "t": int(time.time())}, separators=(",", ":"), default=str).encode()
        return base64.urlsafe_b64encode(body + self._tag(binding, body)).decode().rstrip("=")

    def _tag(self, binding: str, body: bytes) -> bytes:
        return hmac.digest(self._mac, binding.encode() + b"\0" + body, "sha256")[:_TAG]

    def open(self, cursor: Any, binding: str) -> list[Any]:
        """The sort-key values of a cursor made for `binding`; InvalidCursorError otherwise."""
        if not isinstance(cursor, str) or not 0 < len(cursor) <= _MAX_CURSOR:
            raise InvalidCursorError(_INVALID)
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except ValueError:
            raise InvalidCursorError(_INVALID) from None
        if len(raw) <= _TAG:
            raise InvalidCursorError(_INVALID)
        body, tag = raw[:-_TAG], raw[-_TAG:]
        # The binding is authenticated, not stored: a cursor opened for another query fails here.
        if not hmac.compare_digest(tag, self._tag(binding, body)):
            raise InvalidCursorError(_INVALID)
        try:
            data = json.loads(body)
        except ValueError:
            raise InvalidCursorError(_INVALID) from None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("v"), list)
            or not isinstance(data.get("t"), int)
            or time.time() - data["t"] > self._ttl
        ):
            raise InvalidCursorError(_INVALID)
        return data["v"]  # type: ignore[no-any-return]
