"""`ormai-agents demo`: a scripted agent conversation for two tenants, offline, and what it proved.

The output is written for an 80-column terminal: values are shown as `key=value` words, so lines
wrap between words, never inside them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from ormai_agents._results import page_records
from ormai_agents.cli._common import CliError, console

_INTRO = (
    "A shop with two tenants, acme and globex, in an embedded SQLite database. A LangChain agent "
    "(create_agent) with a scripted model (offline, no LLM) gets tools bound to one tenant's user, "
    "then tries the other tenant's rows, a denied field and writes."
)


def demo(
    db: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="Keep the demo's SQLite database at this path (default: a temporary file).",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Overwrite --db PATH even when it is not an earlier demo database.",
        ),
    ] = False,
) -> None:
    """Play a scripted agent conversation for two tenants (offline) and show what was allowed."""
    from ormai_agents.demo import PRINCIPALS, DemoDatabaseError, run_demo

    con = console()
    try:
        report = run_demo(db, force=force)
    except DemoDatabaseError as exc:
        hint = "; choose another path, or pass --force to overwrite it" if "left untouched" in str(exc) else ""
        raise CliError(f"--db: {exc}{hint}") from None
    con.print(Text("ormai-agents demo", style="bold"))
    con.print(_INTRO + "\n")
    for tenant in ("acme", "globex"):
        who = PRINCIPALS[tenant]
        steps = Table(
            title=f"Agent of {tenant} (user {who.user_id})",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            expand=True,
        )
        steps.add_column("#", width=2, justify="right")
        steps.add_column("the agent tries", ratio=5)
        steps.add_column("and gets", ratio=6)
        for i, step in enumerate((s for s in report.steps if s.tenant == tenant), 1):
            call = Text(step.label, style="bold")
            call.append(f"\n{step.tool} {_words(step.arguments)}", style="dim")
            steps.add_row(str(i), call, _result(step.ok, step.result))
        con.print(steps)
        con.print(Text.assemble(("agent's answer: ", "dim"), report.answers.get(tenant, "")))
        con.print()
    con.print(_audit(report.audit))
    con.print()
    con.print(Text("What the demo checked", style="bold"))
    for text, ok in report.checks:
        con.print(Text.assemble(("  ✓ " if ok else "  ✗ ", "green" if ok else "red"), text))
    if db is not None:
        con.print(f"\nThe database is kept at {db}.")
    if not report.passed:
        raise CliError("a demo check failed", code=1)


def label(ok: bool, code: str | None) -> Text:
    """The same words for an outcome in the steps and in the audit trail."""
    return Text("ok", style="green") if ok else Text(f"refused: {code or 'error'}", style="red")


def _value(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return str(value)


def _words(mapping: dict[str, Any]) -> str:
    """`key=value` pairs separated by spaces, so a narrow column wraps between them."""
    return " ".join(f"{k}={_value(v)}" for k, v in mapping.items())


def _result(ok: bool, payload: Any) -> Text:
    out = label(ok, payload.get("error") if isinstance(payload, dict) else None)
    if not isinstance(payload, dict):
        return out.append(f" {payload}")
    if not ok:
        return out.append(f"\n{payload.get('message', '')}", style="")
    if isinstance(payload.get("rows"), list):
        rows = page_records(payload)  # a page is a table (columns, rows): back to one record per row
        out.append(f": {len(rows)} row{'s' if len(rows) != 1 else ''}")
        for row in rows[:3]:
            out.append(f"\n{_words(row)}")
        if len(rows) > 3:
            out.append(f"\n... and {len(rows) - 3} more")
    elif isinstance(payload.get("groups"), list):
        out.append("\n" + "; ".join(_words(g) for g in payload["groups"]))
    elif isinstance(payload.get("data"), dict):
        out.append(f"\n{_words(payload['data'])}")
    return out


def _audit(records: list[Any]) -> Table:
    table = Table(
        title="Audit trail, one record per call (oldest first)",
        title_justify="left",
        box=None,
        pad_edge=False,
        padding=(0, 1),
    )
    for name in ("user", "tool", "model", "outcome", "rows", "scope injected"):
        table.add_column(
            name, justify="right" if name == "rows" else "left", no_wrap=name in ("outcome", "scope injected")
        )
    for r in records:
        scope = " AND ".join(r.scopes_injected) + (" (bypass)" if r.bypass_used else "")
        table.add_row(
            str(r.user_id or ""),
            r.tool_name,
            r.model or "",
            label(r.outcome == "success", r.error_code),
            "" if r.row_count is None else str(r.row_count),
            scope,
        )
    return table
