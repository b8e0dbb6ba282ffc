"""The hostile harness (tests/redteam_harness.py) on every backend, driver and adapter.

Hypothesis plays a hostile agent for many principals at once (look-alike tenants and users)
against hostile rows; every answer is checked against the database. The suite runs a short
round per backend; `python benchmarks/redteam.py` runs a long one and counts the calls.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import BACKENDS, Backend, make_backend
from tests.redteam_harness import SEED_CALLS, Harness, Stats, UnexpectedErrors, a_call, seed

EXAMPLES = int(os.environ.get("ORMAI_REDTEAM_EXAMPLES", "15"))
STATS = Stats()


@pytest.fixture(scope="module", params=BACKENDS)
def rt_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    backend, cleanup = make_backend(request.param, tmp_path_factory.mktemp("redteam"))
    seed(backend)
    yield backend
    cleanup()


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    path = os.environ.get("ORMAI_REDTEAM_REPORT")
    if path:
        import json

        with open(path, "w") as out:
            json.dump({"calls": dict(STATS.calls), "outcomes": dict(STATS.outcomes)}, out, indent=1, sort_keys=True)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_hostile_agent_gets_only_its_own_scope(rt_backend: Backend, kind: str) -> None:
    harness = Harness(rt_backend, kind, STATS)
    watch = UnexpectedErrors()
    logging.getLogger("ormai_agents").addHandler(watch)
    loop = asyncio.new_event_loop()
    calls = st.lists(a_call(harness.tool_args), min_size=1, max_size=8)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(calls, st.sampled_from(["kernel", "mcp", "langchain"]))
    def attack(sequence: list[tuple[int, str, dict[str, Any]]], adapter: str) -> None:
        loop.run_until_complete(harness.run(sequence, adapter))
        loop.run_until_complete(harness.concurrently(sequence))
        assert not watch.messages, watch.messages[:3]

    try:
        for adapter in ("kernel", "mcp", "langchain"):
            loop.run_until_complete(harness.run(SEED_CALLS, adapter))
        assert not watch.messages, watch.messages[:3]
        attack()
    finally:
        loop.close()
        logging.getLogger("ormai_agents").removeHandler(watch)
