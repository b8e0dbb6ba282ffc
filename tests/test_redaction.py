"""Property: no secret placed where the policy hides it reaches an audit record's inputs."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ormai_agents import Toolset
from ormai_agents._redact import REDACTED
from tests import shop

SECRET = "S3CR3T-prop"
TOOLSET = Toolset(shop.Base, shop.shop_policy(redact_keys=["password", "token", "pin"]), secret_key=b"r" * 32)
PLAN = TOOLSET.plan("Customer")
HIDDEN_FIELDS = ["email", "phone", "ssn", "password_hash", "nope", "", "NAME", 3, None]  # masked, hashed, denied, unknown
SECRET_KEYS = ["password", "api_TOKEN", "Pin_code", "x_password_y"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.just(SECRET))
# Any JSON-like value; secrets may sit anywhere inside it.
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)), max_leaves=8)
# A value on a plain field: secrets only under secret-looking keys.
safe_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(alphabet="abc", max_size=5))
keyed_secret = st.builds(lambda k, extra: {k: SECRET, **extra}, st.sampled_from(SECRET_KEYS), st.dictionaries(st.sampled_from(["a", "b"]), safe_scalars, max_size=2))
plain_values = st.recursive(st.one_of(safe_scalars, keyed_secret), lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3)), max_leaves=6)

# A value with the secret somewhere inside it.
with_secret = st.one_of(
    st.just(SECRET),
    st.lists(values, max_size=2).map(lambda items: [*items, SECRET]),
    st.dictionaries(st.text(max_size=3), values, max_size=2).map(lambda d: {**d, "k": [SECRET]}),
)
hidden_filter = st.fixed_dictionaries({"field": st.sampled_from(HIDDEN_FIELDS), "op": st.sampled_from(["eq", "in", "startswith", SECRET]), "value": with_secret})
plain_filter = st.fixed_dictionaries({"field": st.sampled_from(["name", "id", "tenant_id"]), "op": st.sampled_from(["eq", "in"]), "value": plain_values})
smuggled = st.builds(lambda f, k: {**f, k: SECRET}, plain_filter, st.sampled_from(["token", "extra", "note"]))
# Every example hides a secret on a hidden field, among other filters; or sends a malformed filter.
filters = st.one_of(
    st.lists(st.one_of(hidden_filter, plain_filter, smuggled, with_secret), max_size=3).flatmap(
        lambda rest: st.builds(lambda h, i: [*rest[:i], h, *rest[i:]], hidden_filter, st.integers(0, len(rest)))
    ),
    with_secret,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(filters=filters, select=st.lists(st.sampled_from(["id", "name", SECRET]), max_size=2), id_value=plain_values)
def test_filter_secrets_never_logged(filters: Any, select: Any, id_value: Any) -> None:
    out = TOOLSET.redact(PLAN, {"filters": filters, "select": select, "id": id_value, "cursor": SECRET, "password": SECRET})
    text = json.dumps(out, default=str)
    # `select` names are not values: a secret typed there is the agent's own text, kept for forensics.
    assert SECRET not in text.replace(json.dumps(select), "")


@settings(max_examples=150, deadline=None)
@given(payload=st.dictionaries(st.sampled_from(["email", "ssn", "password_hash", "nope", "api_token"]), values, max_size=4),
       name=plain_values)  # fmt: skip
def test_write_data_secrets_never_logged(payload: dict[str, Any], name: Any) -> None:
    out = TOOLSET.redact(PLAN, {"data": {**payload, "name": name}})
    assert SECRET not in json.dumps(out, default=str)
    assert all(out["data"][k] == REDACTED for k in payload)


def test_plain_values_are_kept() -> None:
    out = TOOLSET.redact(PLAN, {"filters": [{"field": "name", "op": "eq", "value": "Ann"}], "data": {"name": {"a": [1, {"b": "x"}]}}})
    assert out == {"filters": [{"field": "name", "op": "eq", "value": "Ann"}], "data": {"name": {"a": [1, {"b": "x"}]}}}
