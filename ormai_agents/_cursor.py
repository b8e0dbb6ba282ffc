"""Opaque keyset cursors: encrypted and authenticated with keys derived from the toolset secret.

The payload holds the last row's sort-key values (which may include a primary key the agent may
not read) and is authenticated together with a fingerprint of the query it belongs to: principal, model,
filters and order.
Encryption keeps those values from the agent; the MAC makes any change, or use by another
principal or query, an error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from typing import Any

from ormai_agents._errors import InvalidCursorError

_NONCE = 12
_TAG = 16
_INVALID = "The cursor is invalid or expired, or belongs to a different query. Repeat the query without a cursor."


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A key for one purpose ("cursor-enc", "hash", ...) from the toolset secret."""
    return hmac.new(secret, b"ormai-agents:" + purpose.encode(), hashlib.sha256).digest()


def _keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    blocks = (length + 31) // 32
    return b"".join(hmac.digest(key, nonce + i.to_bytes(4, "big"), "sha256") for i in range(blocks))[:length]


def _xor(data: bytes, stream: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


class CursorCodec:
    """Seals and opens cursors for one toolset."""

    def __init__(self, secret: bytes, ttl_seconds: int) -> None:
        self._enc = derive_key(secret, "cursor-enc")
        self._mac = derive_key(secret, "cursor-mac")
        self._ttl = ttl_seconds

    def seal(self, binding: str, values: list[Any]) -> str:
        data = json.dumps({"v": values, "t": int(time.time())}, separators=(",", ":"), default=str).encode()
        nonce = os.urandom(_NONCE)
        cipher = _xor(data, _keystream(self._enc, nonce, len(data)))
        tag = self._tag(binding, nonce, cipher)
        return base64.urlsafe_b64encode(nonce + cipher + tag).decode().rstrip("=")

    def _tag(self, binding: str, nonce: bytes, cipher: bytes) -> bytes:
        return hmac.digest(self._mac, binding.encode() + b"\0" + nonce + cipher, "sha256")[:_TAG]

    def open(self, cursor: Any, binding: str) -> list[Any]:
        """The sort-key values of a cursor made for `binding`; InvalidCursorError otherwise."""
        if not isinstance(cursor, str) or not 0 < len(cursor) <= 8192:
            raise InvalidCursorError(_INVALID)
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except ValueError:
            raise InvalidCursorError(_INVALID) from None
        if len(raw) <= _NONCE + _TAG:
            raise InvalidCursorError(_INVALID)
        nonce, cipher, tag = raw[:_NONCE], raw[_NONCE:-_TAG], raw[-_TAG:]
        # The binding is authenticated, not stored: a cursor opened for another query fails here.
        if not hmac.compare_digest(tag, self._tag(binding, nonce, cipher)):
            raise InvalidCursorError(_INVALID)
        try:
            body = json.loads(_xor(cipher, _keystream(self._enc, nonce, len(cipher))))
        except ValueError:
            raise InvalidCursorError(_INVALID) from None
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("v"), list)
            or not isinstance(body.get("t"), int)
            or time.time() - body["t"] > self._ttl
        ):
            raise InvalidCursorError(_INVALID)
        return body["v"]
