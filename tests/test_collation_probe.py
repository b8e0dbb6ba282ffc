"""PostgreSQL: the byte-exact scope comparison is kept exactly where a column's collation may fold.

On PostgreSQL `=` on text under a deterministic collation is already byte-exact, so the extra
byte comparison only costs time (once per row the scope matches). The toolset reads, once per
engine, which text columns may fold (nondeterministic collations, types such as citext) and keeps
the byte comparison for those only. Here a column under a case-insensitive ICU collation keeps it
(and a look-alike tenant reads nothing), and a column under the default collation drops it.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, Integer, String, insert, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase

from ormai_agents import ModelPolicy, Policy, Principal, RunContext, Toolset
from ormai_agents._dialects import capabilities, exact_equals  # noqa: PLC2701 - the construct under test
from tests._truth import captured
from tests.conftest import Backend


class Base(DeclarativeBase):
    pass


class Folded(Base):
    __tablename__ = "probe_folded"
    id = Column(Integer, primary_key=True)
    tenant_id = Column(String(40))  # the database gives it a case-insensitive collation
    name = Column(String(40))


class Plain(Base):
    __tablename__ = "probe_plain"
    id = Column(Integer, primary_key=True)
    tenant_id = Column(String(40))
    name = Column(String(40))


TENANT = {"tenant_id": "principal.tenant_id"}
FIELDS = {"id": "allow", "tenant_id": "allow", "name": "allow"}
POLICY = Policy(
    models={"Folded": ModelPolicy(fields=FIELDS, scoping=TENANT), "Plain": ModelPolicy(fields=FIELDS, scoping=TENANT)}
)
ROWS = [{"id": i, "tenant_id": t, "name": f"n{i}"} for i, t in enumerate(["acme", "ACME", "Acme", "acme", "globex"], 1)]


@pytest.fixture
def backend(empty_backend: Backend) -> Backend:
    with empty_backend.sync_engine.begin() as conn:
        ci = "CREATE COLLATION probe_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
        conn.execute(text(ci))
        table = (
            "CREATE TABLE probe_folded (id integer PRIMARY KEY, tenant_id varchar(40) COLLATE probe_ci, "
            "name varchar(40))"
        )
        conn.execute(text(table))
        Plain.__table__.create(conn)
        conn.execute(insert(Folded), ROWS)
        conn.execute(insert(Plain), ROWS)
        # The collation does fold: without the byte check 'acme' would match 'ACME' and 'Acme'.
        folding = conn.execute(text("SELECT count(*) FROM probe_folded WHERE tenant_id = 'acme'")).scalar_one()
        assert folding == 4
    return empty_backend


@pytest.mark.parametrize("empty_backend", ["postgres"], indirect=True)
@pytest.mark.parametrize("use_async", [False, True])
async def test_the_byte_check_stays_where_the_collation_folds(backend: Backend, use_async: bool) -> None:
    toolset = Toolset(Base, POLICY)

    def ctx_of(db: Any) -> RunContext:
        return RunContext(Principal(tenant_id="acme"), db)

    async def run(db: Any) -> dict[str, list[int]]:
        out = {}
        for model in ("Folded", "Plain"):
            rows = (await toolset.query(ctx_of(db), model=model)).rows
            assert (await toolset.aggregate(ctx_of(db), model=model)).value == len(rows)
            out[model] = sorted(r["id"] for r in rows)
        return out

    with captured(backend, tables="probe_folded|probe_plain") as statements:
        if use_async:
            async with backend.async_session() as db:
                seen = await run(db)
        else:
            with backend.session() as db:
                seen = await run(db)
    assert seen == {"Folded": [1, 4], "Plain": [1, 4]}  # exact on both: no look-alike tenant
    folded = [sql for sql, _ in statements if "probe_folded" in sql]
    plain = [sql for sql, _ in statements if "probe_plain" in sql]
    twin = _byte_twin()
    assert folded and all(twin in sql for sql in folded)
    assert plain and not any(twin in sql for sql in plain)


def _byte_twin() -> str:
    """A piece of SQL only the byte comparison renders on PostgreSQL."""
    template = capabilities(postgresql.dialect()).exact_text
    assert template is not None
    before, after = template.split("{}")
    return after.strip() or before.strip()


def test_an_engine_not_probed_keeps_every_byte_check() -> None:
    # A dialect the toolset has not asked (or whose answer failed) renders the byte comparison.
    clause = exact_equals(Plain.__table__.c.tenant_id, "acme")
    assert _byte_twin() in str(clause.compile(dialect=postgresql.dialect()))


@pytest.mark.parametrize("empty_backend", ["postgres"], indirect=True)
async def test_a_collation_changed_while_running_is_seen_again(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ormai_agents import _dialects  # noqa: PLC2701 - its probe interval

    toolset = Toolset(Base, POLICY)
    with backend.session() as db:
        ctx = RunContext(Principal(tenant_id="acme"), db)
        assert sorted(r["id"] for r in (await toolset.query(ctx, model="Plain")).rows) == [1, 4]
        db.commit()
        # A migration gives the scope column a case-insensitive collation while the toolset runs.
        db.execute(text("ALTER TABLE probe_plain ALTER COLUMN tenant_id TYPE varchar(40) COLLATE probe_ci"))
        db.commit()
        monkeypatch.setattr(_dialects, "PROBE_SECONDS", 0.0)  # the next call reads the catalog again
        with captured(backend, tables="probe_plain") as statements:
            rows = (await toolset.query(ctx, model="Plain")).rows
        assert sorted(r["id"] for r in rows) == [1, 4]  # 'ACME' and 'Acme' still out of acme's scope
        assert statements and all(_byte_twin() in sql for sql, _ in statements)
