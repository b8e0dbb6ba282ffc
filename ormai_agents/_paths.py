"""`principal.<path>` references, shared by scoping, row policies and auto-set values."""

from __future__ import annotations

import re

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_ATTRIBUTES = ("tenant_id", "user_id", "roles")


def parse_principal_path(text: str) -> tuple[str, ...]:
    """Split `principal.tenant_id` / `principal.metadata.org.id` into its parts after `principal`.

    Raises ValueError for anything else: a misspelt path must never resolve to "missing" and
    quietly deny (or worse, be treated as optional) at run time.
    """
    parts = text.split(".")
    if len(parts) < 2 or parts[0] != "principal":
        raise ValueError(
            f"{text!r} is not a principal reference; use principal.tenant_id, principal.user_id, "
            "principal.roles or principal.metadata.<key>"
        )
    rest = tuple(parts[1:])
    if rest[0] in _ATTRIBUTES and len(rest) == 1:
        return rest
    if rest[0] == "metadata" and len(rest) >= 2 and all(_KEY.match(p) for p in rest[1:]):
        return rest
    raise ValueError(
        f"{text!r} is not a valid principal reference; use principal.tenant_id, principal.user_id, "
        "principal.roles or principal.metadata.<key>[.<key>...]"
    )
