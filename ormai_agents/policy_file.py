"""Policies in YAML or JSON files, loaded into the same pydantic models as policies in code.

The file holds one `Policy` written as data: the same option names, with enum values as their
lower-case strings. Unknown keys are errors, exactly as in code. A minimal file::

    max_rows: 100
    models:
      Order:
        fields:
          id: allow
          status: allow
          email: {action: mask, mask_show_last: 4}
        scoping:
          tenant_id: principal.tenant_id
        row_policies:
          - name: parent_access
            condition: tenant_id IN principal.metadata.tenant_hierarchy
            mode: permit
        write_policy:
          create: allow
          auto_set: {tenant_id: principal.tenant_id}
          immutable_fields: [tenant_id]

`load_policy(path)` picks the format from the file extension (`.yaml`/`.yml` or `.json`);
`parse_policy(text, format)` reads a string. YAML needs PyYAML (in the `all` extra).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pydantic

from ormai_agents._errors import PolicyError
from ormai_agents.policy import Policy

__all__ = ["dump_policy", "load_policy", "parse_policy", "policy_from_data"]

Format = Literal["yaml", "json"]


def load_policy(path: str | Path) -> Policy:
    """Read a policy file (`.yaml`, `.yml` or `.json`); raises `PolicyError` when it is wrong."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        fmt: Format = "yaml"
    elif suffix == ".json":
        fmt = "json"
    else:
        raise PolicyError(f"{path}: a policy file ends in .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: can't read the policy file ({exc.strerror or exc})") from None
    return parse_policy(text, fmt, source=str(path))


def parse_policy(text: str, format: Format = "yaml", *, source: str = "<policy>") -> Policy:
    """A policy from YAML or JSON text."""
    if format == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    elif format == "yaml":
        try:
            import yaml
        except ImportError:  # pragma: no cover - yaml ships with the `all` extra
            raise PolicyError("YAML policy files need PyYAML: pip install 'ormai-agents[all]'") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise PolicyError(f"{source}: invalid YAML{where}") from None
    else:
        raise ValueError("format must be 'yaml' or 'json'")
    return policy_from_data(data, source=source)


def policy_from_data(data: Any, *, source: str = "<policy>") -> Policy:
    """A policy from already-parsed data (a dict shaped like the file format).

    An empty file is refused: a policy that names no model denies everything, which is never
    what a file was written for.
    """
    if data is None or data == {}:
        raise PolicyError(f"{source}: the policy file is empty; it needs a 'models' mapping")
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the top level of a policy file must be a mapping with a 'models' key")
    try:
        return Policy.model_validate(data)
    except pydantic.ValidationError as exc:
        lines = [f"{source}: the policy is not valid ({exc.error_count()} problem(s)):"]
        for err in exc.errors()[:20]:
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg']}")
        raise PolicyError("\n".join(lines)) from None


def dump_policy(policy: Policy, format: Format = "yaml") -> str:
    """The policy as file text (only options that differ from their defaults)."""
    data = policy.model_dump(mode="json", exclude_defaults=True)
    for name, model in data.get("models", {}).items():
        for field, options in model.get("fields", {}).items():
            if set(options) <= {"action"}:  # shorthand: `email: mask`
                model["fields"][field] = policy.models[name].fields[field].action.value
    if format == "json":
        return json.dumps(data, indent=2) + "\n"
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
