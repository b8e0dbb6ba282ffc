"""lint on what the database adds to a policy: collations that fold on scoping columns (MariaDB's
default folds case, accents and trailing spaces; SQLite's NOCASE and RTRIM), and no row-level
security on MySQL and MariaDB. Real tables on real servers; the fix the finding names is applied
and the finding goes away."""

from __future__ import annotations

import pytest
from sqlalchemy import Integer, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ormai_agents import FieldAction, ModelPolicy, Policy
from ormai_agents.lint import lint_policy
from tests.conftest import BACKENDS, Backend


def _models(collation: str | None) -> type[DeclarativeBase]:
    class Base(DeclarativeBase):
        pass

    class Note(Base):
        __tablename__ = "notes"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        tenant_id: Mapped[str] = mapped_column(String(40, collation=collation), index=True)
        body: Mapped[str] = mapped_column(String(200))

    return Base


POLICY = Policy(models={"Note": ModelPolicy(
    fields={"id": FieldAction.Allow, "tenant_id": FieldAction.Allow, "body": FieldAction.Allow},
    scoping={"tenant_id": "principal.tenant_id"},
)})  # fmt: skip

# The collation a table gets when it declares none, and one that folds nothing, per backend.
FOLDING = {"sqlite": "NOCASE", "postgres": None, "mysql": None}
EXACT = {"sqlite": None, "postgres": None, "mysql": "utf8mb4_nopad_bin"}


@pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)
def test_lint_reports_folding_scope_collations_and_missing_rls(empty_backend: Backend) -> None:
    engine = empty_backend.sync_engine
    folding = _models(FOLDING[empty_backend.name])
    folding.metadata.create_all(engine)
    findings = lint_policy(POLICY, engine)
    codes = {(f.code, f.model) for f in findings}
    if empty_backend.is_postgres:  # deterministic default collation, and row-level security
        assert codes == set()
        return
    scope = next(f for f in findings if f.code == "scope-collation")
    assert scope.model == "Note" and scope.severity == "warning" and "notes.tenant_id" in scope.message
    if empty_backend.is_mysql:
        # The test database's utf8mb4_general_ci folds all three.
        assert "utf8mb4_general_ci" in scope.message
        assert "case and accents and trailing spaces (PAD SPACE)" in scope.message
        assert "utf8mb4_nopad_bin" in scope.fix
        assert ("no-row-level-security", None) in codes
        rls = next(f for f in findings if f.code == "no-row-level-security")
        assert rls.severity == "warning" and "row-level security" in rls.message
    else:
        assert "NOCASE" in scope.message and "case" in scope.message and codes == {("scope-collation", "Note")}

    # The fix: a collation that folds nothing. The collation finding goes; the RLS one stays.
    folding.metadata.drop_all(engine)
    _models(EXACT[empty_backend.name]).metadata.create_all(engine)
    after = {(f.code, f.model) for f in lint_policy(POLICY, engine)}
    assert after == ({("no-row-level-security", None)} if empty_backend.is_mysql else set())


@pytest.mark.parametrize("empty_backend", ["mysql"], indirect=True)
@pytest.mark.parametrize(
    ("collation", "folds"),
    [
        ("utf8mb4_bin", "trailing spaces (PAD SPACE):"),  # case and accent sensitive, but PAD SPACE
        ("utf8mb4_unicode_ci", "case and accents and trailing spaces (PAD SPACE):"),
        ("utf8mb4_unicode_nopad_ci", "case and accents:"),
        ("utf8mb4_nopad_bin", None),
        ("latin1_general_cs", "trailing spaces (PAD SPACE):"),
    ],
)
def test_lint_names_what_each_mysql_collation_folds(empty_backend: Backend, collation: str, folds: str | None) -> None:
    charset = collation.split("_")[0]
    with empty_backend.sync_engine.begin() as conn:
        conn.execute(text(
            f"CREATE TABLE notes (id INT PRIMARY KEY, tenant_id VARCHAR(40) CHARACTER SET {charset} COLLATE {collation}, "
            "body VARCHAR(200), KEY ix_notes_tenant_id (tenant_id))"
        ))  # fmt: skip
    found = [f for f in lint_policy(POLICY, empty_backend.sync_engine) if f.code == "scope-collation"]
    if folds is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].message.split("which folds ")[1].startswith(folds), found
