"""Pytest fixtures for testing your policy. Enable them in your `conftest.py`:

```python
pytest_plugins = ["ormai_agents.testing.pytest_plugin"]

@pytest.fixture
def ormai_toolset():            # your Toolset
    return Toolset(Base, policy)

@pytest.fixture
def ormai_db(session):          # a Session or AsyncSession on seeded data
    return session
```

Then:

```python
async def test_isolation(tenant_isolation):
    await tenant_isolation([Principal(tenant_id="a"), Principal(tenant_id="b")])

async def test_orders(ormai_harness, ormai_db):
    result = await ormai_harness.run(RunContext(p, ormai_db), tool="query", kwargs={"model": "Order"},
                                     invariants=[no_cross_tenant_data])
    assert result.passed, result.violations
```
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from ormai_agents._context import Principal
from ormai_agents.eval import EvalHarness, Recorder
from ormai_agents.testing.isolation import IsolationReport, assert_tenant_isolation
from ormai_agents.toolset import Toolset


@pytest.fixture
def ormai_harness(ormai_toolset: Toolset) -> EvalHarness:
    """An `EvalHarness` on your `ormai_toolset`, judged by its own policy."""
    return EvalHarness(ormai_toolset, ormai_toolset.policy)


@pytest.fixture
def ormai_recorder(tmp_path: Path) -> Recorder:
    """A `Recorder` writing to a file in the test's temporary directory."""
    return Recorder(tmp_path / "ormai-calls.jsonl")


@pytest.fixture
def tenant_isolation(ormai_toolset: Toolset, ormai_db: Any) -> Callable[..., Awaitable[IsolationReport]]:
    """`await tenant_isolation(principals, models=None, **options)`: `assert_tenant_isolation`
    on your `ormai_toolset` and `ormai_db`."""

    async def check(
        principals: Sequence[Principal], models: Sequence[str] | None = None, **options: Any
    ) -> IsolationReport:
        return await assert_tenant_isolation(ormai_toolset, ormai_db, principals, models, **options)

    return check
