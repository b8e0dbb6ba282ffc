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
