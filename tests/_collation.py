"""How each test backend compares text in agent filters, for the oracles.

Agent filters keep each database's own semantics (scope and row policies do not: those are exact
everywhere). The oracles model them:

- SQLite: `=`, `<` and ORDER BY compare code points; LIKE folds the case of ASCII letters only.
- PostgreSQL (the test database's collation is C.UTF-8): code points everywhere; LIKE is exact.
- MariaDB, utf8mb4_general_ci (the per-run test database's collation): every character has a
  weight (case and accents fold: 'A' = 'a' = 'á'); `=`, `<` and ORDER BY compare the weights with
  PAD SPACE (the shorter string is padded with spaces, so 'a' = 'a '); LIKE compares the weights
  character by character, without padding. The weights are the server's own (WEIGHT_STRING of
  each character); the semantics above are the oracle's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, text

_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class Collation:
    """Text comparison of one backend: `compare` for = < > and ORDER BY, `like` for LIKE."""

    name = "binary"

    def compare(self, a: str, b: str) -> int:
        return (a > b) - (a < b)

    def like(self, s: str) -> str:
        """`s` folded so that Python's `in`, startswith and endswith behave as LIKE does."""
        return s

    def eq(self, a: Any, b: Any) -> bool:
        if isinstance(a, str) and isinstance(b, str):
            return self.compare(a, b) == 0
        return bool(a == b)

    def lt(self, a: Any, b: Any) -> bool:
        if isinstance(a, str) and isinstance(b, str):
            return self.compare(a, b) < 0
        return bool(a < b)

    def sort_key(self) -> Callable[[Any], Any]:
        return functools.cmp_to_key(self._cmp_any)

    def _cmp_any(self, a: Any, b: Any) -> int:
        if isinstance(a, str) and isinstance(b, str):
            return self.compare(a, b)
        return (a > b) - (a < b)


class SQLiteCollation(Collation):
    name = "sqlite"

    def like(self, s: str) -> str:
        return s.translate(_ASCII_FOLD)


class MariaDBCollation(Collation):
    """utf8mb4_general_ci (or whichever collation `collation` names), weights from the server."""

    name = "mariadb"

    def __init__(self, engine: Engine, collation: str) -> None:
        self.engine = engine
        self.collation = collation
        self._weights: dict[str, int] = {}

    def _weight(self, c: str) -> int:
        w = self._weights.get(c)
        if w is None:
            with self.engine.connect() as conn:
                raw = conn.execute(text(f"SELECT WEIGHT_STRING(:c COLLATE {self.collation})"), {"c": c}).scalar_one()
            w = int.from_bytes(bytes(raw), "big")
            self._weights[c] = w
        return w

    def learn(self, values: Any) -> None:
        """Fetch the weights of every character in `values` in one statement."""
        chars = sorted({c for v in values if isinstance(v, str) for c in v} - set(self._weights))
        if not chars:
            return
        with self.engine.connect() as conn:
            stmt = text(f"SELECT WEIGHT_STRING(:c COLLATE {self.collation})")
            for c in chars:  # one connection; a round trip per new character, once per run
                raw = conn.execute(stmt, {"c": c}).scalar_one()
                self._weights[c] = int.from_bytes(bytes(raw), "big")

    def compare(self, a: str, b: str) -> int:
        wa = [self._weight(c) for c in a]
        wb = [self._weight(c) for c in b]
        space = self._weight(" ")
        n = max(len(wa), len(wb))
        wa += [space] * (n - len(wa))  # PAD SPACE
        wb += [space] * (n - len(wb))
        return (wa > wb) - (wa < wb)

    def like(self, s: str) -> str:
        return "".join(chr(0xF0000 + self._weight(c)) for c in s)


def for_backend(backend: Any) -> Collation:
    if backend.name == "sqlite":
        return SQLiteCollation()
    if backend.name == "mysql":
        from tests.conftest import MYSQL_COLLATION

        return MariaDBCollation(backend.sync_engine, MYSQL_COLLATION)
    return Collation()
