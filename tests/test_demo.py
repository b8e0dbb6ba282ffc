"""`ormai-agents demo`: the scripted two-tenant conversation runs offline and shows the promises."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from ormai_agents.cli import app
from ormai_agents.demo import Order, run_demo


def test_demo_report_and_database(tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    report = run_demo(db)
    assert report.passed, [text for text, ok in report.checks if not ok]
    assert len(report.checks) == 16
    assert [s.tenant for s in report.steps] == ["acme"] * 8 + ["globex"] * 8
    by = {(s.tenant, s.label): s for s in report.steps}
    assert by[("acme", "read another tenant's order by id")].result["error"] == "not_found"
    created = by[("globex", "create an order (tenant set by the server)")].result["data"]
    assert created["tenant_id"] == "globex" and created["user_id"] == "gus"
    # The audit trail has one record per call, denied calls included.
    assert [r.outcome for r in report.audit].count("denied") == 4
    assert {tuple(r.scopes_injected) for r in report.audit} == {("tenant_id = 'acme'",), ("tenant_id = 'globex'",)}

    # The kept database holds what the checks claim: 6 orders per tenant, the new ones server-scoped.
    engine = create_engine(f"sqlite:///{db}")
    with Session(engine) as session:
        counts = dict(session.execute(select(Order.tenant_id, func.count()).group_by(Order.tenant_id)).all())
        newest = session.scalars(select(Order).order_by(Order.id.desc()).limit(2)).all()
    engine.dispose()
    assert counts == {"acme": 6, "globex": 6}
    assert {(o.tenant_id, o.user_id, o.created_at is not None) for o in newest} == {("acme", "ann", True), ("globex", "gus", True)}


def test_demo_command_prints_calls_audit_and_checks() -> None:
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("Agent of acme", "Agent of globex", "Audit trail", "What the demo checked",
                 "tenant_id = 'globex'", "not_found", "create_order", "field_not_allowed"):  # fmt: skip
        assert text in out, text
    assert "✗" not in out and out.count("✓") == 16
    # Denied values never reach the screen: password hashes, internal notes, billing plans.
    for secret in ("not-a-real-hash", "internal: margin", "enterprise-"):
        assert secret not in out


def test_demo_output_reads_well_at_80_columns(monkeypatch: object) -> None:
    result = CliRunner().invoke(app, ["demo"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    # Values are words: nothing is cut inside a scope, a field name or an error code.
    audit = lines[
        next(i for i, line in enumerate(lines) if line.startswith("Audit trail")) :
    ]
    assert sum("tenant_id = 'acme'" in line for line in audit) == 8
    assert sum("tenant_id = 'globex'" in line for line in audit) == 8
    # The same refusal reads the same in the steps and in the audit trail.
    steps = lines[: len(lines) - len(audit)]
    for words in ("refused: not_found", "refused: field_not_allowed"):
        assert any(words in line for line in steps) and any(
            words in line for line in audit
        ), words
    assert "policies" not in result.output and "error (" not in result.output


def _sqlite_file(path: Path) -> bytes:
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)"
        )
        conn.exec_driver_sql("INSERT INTO accounts (owner) VALUES ('someone')")
    engine.dispose()
    return path.read_bytes()


def test_demo_db_never_overwrites_another_file(tmp_path: Path) -> None:
    from ormai_agents.demo import DemoDatabaseError, is_demo_database

    victims = {
        "notes.txt": b"my notes\n",
        "policy.yaml": (
            Path(__file__).resolve().parents[1] / "examples" / "shop_policy.yaml"
        ).read_bytes(),
        "empty.db": b"",
    }
    for name, content in victims.items():
        (tmp_path / name).write_bytes(content)
    victims["app.db"] = _sqlite_file(tmp_path / "app.db")
    for name, content in victims.items():
        result = CliRunner().invoke(app, ["demo", "--db", str(tmp_path / name)])
        assert result.exit_code == 2, (name, result.output)
        assert (
            "not an ormai-agents demo database" in result.output
            and "--force" in result.output
        )
        assert (tmp_path / name).read_bytes() == content, name
        try:
            run_demo(tmp_path / name)
            raise AssertionError("run_demo overwrote " + name)
        except DemoDatabaseError:
            pass
        assert (tmp_path / name).read_bytes() == content
    assert CliRunner().invoke(app, ["demo", "--db", str(tmp_path)]).exit_code == 2
    assert (
        CliRunner()
        .invoke(app, ["demo", "--db", str(tmp_path / "no" / "such" / "shop.db")])
        .exit_code
        == 2
    )

    # Its own database is replaced; --force replaces anything.
    shop = tmp_path / "shop.db"
    assert CliRunner().invoke(
        app, ["demo", "--db", str(shop)]
    ).exit_code == 0 and is_demo_database(shop)
    assert CliRunner().invoke(app, ["demo", "--db", str(shop)]).exit_code == 0
    result = CliRunner().invoke(
        app, ["demo", "--db", str(tmp_path / "app.db"), "--force"]
    )
    assert result.exit_code == 0 and is_demo_database(tmp_path / "app.db")
    assert not is_demo_database(tmp_path / "notes.txt") and not is_demo_database(
        tmp_path / "missing.db"
    )
