"""Policy files, `ormai-agents lint` and `ormai-agents schema`, against real databases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ormai_agents import PolicyError, Principal, Toolset
from ormai_agents.cli import app
from ormai_agents.lint import lint_policy, table_candidates
from ormai_agents.policy_file import dump_policy, load_policy, parse_policy
from tests import shop
from tests.conftest import BACKENDS, Backend

runner = CliRunner()

# Deliberately flawed: every check has something to find.
FLAWED = """
models:
  Order:
    fields: {id: allow, tenant_id: allow, status: allow, colour: allow}
    scoping: {tenant_id: principal.tenant_id}
    row_policies:
      - name: parent_access
        condition: tenant_id IN principal.metadata.tenant_hierarchy
        description: Access data from parent tenants
    write_policy: {create: allow, update: allow}
  Customer:
    fields: {id: allow, name: allow}
  Document:
    fields: {id: allow, title: allow}
    scoping: {tenant_id: principal.tenant_id}
  Invoice:
    fields: {id: allow}
"""

GOOD = """
models:
  Order:
    fields: {id: allow, tenant_id: allow, status: allow, total: allow}
    scoping: {tenant_id: principal.tenant_id}
    row_policies:
      - name: parent_access
        condition: tenant_id IN principal.metadata.tenant_hierarchy
        mode: permit
    write_policy:
      create: allow
      update: allow
      auto_set: {tenant_id: principal.tenant_id}
      immutable_fields: [tenant_id]
  Customer:
    fields: {id: allow, name: allow, email: {action: mask, mask_show_last: 4}, password_hash: deny}
    scoping: {tenant_id: principal.tenant_id}
  Document:
    fields: {id: allow, title: allow, is_public: allow}
    row_policies:
      - name: public_or_owned
        condition: is_public = true OR tenant_id = principal.tenant_id
"""

FLAWED_CODES = {
    ("unknown-field", "Order"),
    ("restrict-grants-nothing", "Order"),
    ("create-without-auto-set", "Order"),
    ("scope-column-writable", "Order"),
    ("unscoped-tenant-column", "Customer"),
    ("unindexed-scope-column", "Document"),
    ("unknown-model", "Invoice"),
}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _seeded(backend: Backend) -> None:
    shop.Base.metadata.create_all(backend.sync_engine)


# --- policy files ------------------------------------------------------------------------------


def test_policy_files_round_trip_in_both_formats(tmp_path: Path) -> None:
    policy = shop.shop_policy()
    for fmt, suffix in (("yaml", ".yaml"), ("json", ".json")):
        path = _write(tmp_path, "p" + suffix, dump_policy(policy, fmt))  # type: ignore[arg-type]
        assert load_policy(path) == policy
    good = parse_policy(GOOD)
    assert good.models["Order"].row_policies[0].mode == "permit"
    assert good.models["Customer"].fields["email"].mask_show_last == 4
    assert good.models["Order"].write_policy.auto_set == {"tenant_id": "principal.tenant_id"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("models: {Order: {scopeing: {tenant_id: principal.tenant_id}}}", "models.Order.scopeing"),
        ("models: {Order: {fields: {id: alow}}}", "models.Order.fields.id.action"),
        ("models: {Order: {scoping: {tenant_id: tenant_id}}}", "models.Order.scoping"),
        ("models: {Order: {row_policies: [{name: x, condition: a, mode: grant}]}}", "mode"),
        ("models: [1, 2", "invalid YAML at line 1"),
        ("- just a list", "top level"),
    ],
)
def test_bad_policy_files_are_errors_that_say_where(text: str, needle: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="p.yaml")
    assert needle in str(info.value)


def test_policy_file_extension_and_json_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="ends in"):
        load_policy(_write(tmp_path, "p.txt", "models: {}"))
    with pytest.raises(PolicyError, match="invalid JSON at line 1"):
        load_policy(_write(tmp_path, "p.json", "{models: }"))


# --- lint ----------------------------------------------------------------------------------------


def policy_findings(findings: list[Any]) -> list[Any]:
    return [f for f in findings if f.code not in ("scope-collation", "no-row-level-security")]


@pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)
def test_lint_finds_every_flaw_with_and_without_models(empty_backend: Backend) -> None:
    _seeded(empty_backend)
    flawed = parse_policy(FLAWED)
    # What the database adds (its collations, no row-level security) is tested in test_lint_database.py.
    reflected = policy_findings(lint_policy(flawed, empty_backend.sync_engine))
    assert {(f.code, f.model) for f in reflected} == FLAWED_CODES
    mapped = policy_findings(lint_policy(flawed, empty_backend.sync_engine, models=shop.Base))
    assert {(f.code, f.model) for f in mapped} == FLAWED_CODES
    hierarchy = next(f for f in reflected if f.code == "restrict-grants-nothing")
    assert "parent_access" in hierarchy.message and "mode: permit" in hierarchy.fix

    good = parse_policy(GOOD)
    assert policy_findings(lint_policy(good, empty_backend.sync_engine)) == []
    assert policy_findings(lint_policy(good, empty_backend.sync_engine, models=shop.Base)) == []
    # The clean policy really is the one the toolset accepts.
    Toolset(shop.Base, good)


def test_lint_reports_what_the_toolset_refuses(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    shop.Base.metadata.create_all(engine)
    # A permit policy on an unscoped model widens nothing: the Toolset refuses it, lint says so.
    policy = parse_policy(
        "models: {Document: {fields: {id: allow}, row_policies: "
        "[{name: pub, condition: 'is_public = true', mode: permit}]}}"
    )
    findings = lint_policy(policy, engine)
    assert [f.code for f in findings] == ["unscoped-tenant-column", "policy-error"]
    assert "mode='permit'" in findings[1].message
    bad_syntax = parse_policy("models: {Document: {fields: {id: allow}, scoping: {tenant_id: principal.tenant_id}, "
                              "row_policies: [{name: x, condition: 'tenant_id = = 1'}]}}")  # fmt: skip
    assert sorted(f.code for f in lint_policy(bad_syntax, engine)) == ["bad-condition", "unindexed-scope-column"]
    engine.dispose()


def test_lint_create_on_an_unscoped_tenant_table(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    shop.Base.metadata.create_all(engine)
    policy = parse_policy("models: {Document: {fields: {id: allow, title: allow, tenant_id: allow}, "
                          "write_policy: {create: allow}}}")  # fmt: skip
    findings = {(f.code, f.model) for f in lint_policy(policy, engine)}
    assert findings == {("unscoped-tenant-column", "Document"), ("create-without-auto-set", "Document")}
    fixed = parse_policy("models: {Document: {fields: {id: allow, title: allow, tenant_id: allow}, "
                         "row_policies: [{name: own, condition: 'tenant_id = principal.tenant_id'}], "
                         "write_policy: {create: allow, auto_set: {tenant_id: principal.tenant_id}}}}")  # fmt: skip
    assert lint_policy(fixed, engine) == []
    engine.dispose()


def test_table_names_derived_from_model_names() -> None:
    assert table_candidates("OrderItem") == ["OrderItem", "orderitem", "order_item", "order_items", "order_itemes"]
    assert "categories" in table_candidates("Category")


def test_lint_cli_exit_codes_and_output(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    db = tmp_path / "shop.db"
    engine = create_engine(f"sqlite:///{db}")
    shop.Base.metadata.create_all(engine)
    engine.dispose()
    url = f"sqlite:///{db}"
    flawed = _write(tmp_path, "flawed.yaml", FLAWED)
    good = _write(tmp_path, "good.yaml", GOOD)

    result = runner.invoke(app, ["lint", "--db", url, "--policy", str(flawed)])
    assert result.exit_code == 1, result.output
    for code, _ in FLAWED_CODES:
        assert code in result.output

    result = runner.invoke(app, ["lint", "--db", url, "--policy", str(flawed), "--models", "tests.shop:Base", "--json"])
    assert result.exit_code == 1
    assert {(f["code"], f["model"]) for f in json.loads(result.output)} == FLAWED_CODES

    result = runner.invoke(app, ["lint", "--db", url, "--policy", str(good)])
    assert result.exit_code == 0, result.output
    assert "no findings" in result.output

    # The async URL an application uses works too; ignored codes don't fail the run.
    ignore = [a for code, _ in FLAWED_CODES for a in ("--ignore", code)]
    result = runner.invoke(app, ["lint", "--db", f"sqlite+aiosqlite:///{db}", "--policy", str(flawed), *ignore])
    assert result.exit_code == 0, result.output

    # An explicit table mapping finds a table the name rules can't.
    renamed = _write(tmp_path, "renamed.yaml", "models: {Sale: {fields: {id: allow}, scoping: {tenant_id: principal.tenant_id}}}")
    result = runner.invoke(app, ["lint", "--db", url, "--policy", str(renamed), "--json"])
    assert [f["code"] for f in json.loads(result.output)] == ["unknown-model"]
    result = runner.invoke(app, ["lint", "--db", url, "--policy", str(renamed), "--table", "Sale=orders"])
    assert result.exit_code == 0, result.output

    result = runner.invoke(app, ["lint", "--db", url, "--policy", str(_write(tmp_path, "bad.yaml", "models: {X: {alowed: true}}"))])
    assert result.exit_code == 2 and "alowed" in result.output


# --- schema ------------------------------------------------------------------------------------


def test_schema_cli_shows_only_what_the_policy_allows(tmp_path: Path) -> None:
    good = _write(tmp_path, "good.yaml", GOOD)
    acme = json.dumps({"tenant_id": "acme", "user_id": "u1", "metadata": {"tenant_hierarchy": ["root", "acme"]}})
    result = runner.invoke(
        app, ["schema", "--policy", str(good), "--principal", acme, "--models", "tests.shop:Base", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    names = {t["name"] for t in out["tools"]}
    assert {"describe_schema", "query", "get", "aggregate", "create_order", "update_order"} <= names
    text = json.dumps(out["tools"])
    for hidden in ("password_hash", "internal_note", "secret_plan", "Tenant", "ssn"):
        assert hidden not in text
    create = next(t for t in out["tools"] if t["name"] == "create_order")
    assert "tenant_id" not in create["parameters"]["properties"]["data"]["properties"]
    assert out["scopes"]["Order"]["scopes"] == ["tenant_id = 'acme'"]
    assert out["scopes"]["Order"]["policies"] == ["parent_access"]

    # No tenant: every scoped model is denied, and the output says so.
    result = runner.invoke(app, ["schema", "--policy", str(good), "--principal", "{}", "--models", "tests.shop:Base", "--json"])
    assert "denied" in json.loads(result.output)["scopes"]["Order"]

    # Per-model layout, human output, models reflected from a database.
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    shop.Base.metadata.create_all(engine)
    engine.dispose()
    result = runner.invoke(
        app,
        ["schema", "--policy", str(good), "--principal", acme, "--db", f"sqlite:///{tmp_path / 'shop.db'}", "--layout", "per_model"],
    )
    assert result.exit_code == 0, result.output
    assert "query_order" in result.output and "password_hash" not in result.output

    for bad_args, needle in (
        (["--principal", '{"tenant": "acme"}', "--models", "tests.shop:Base"], "unknown principal keys"),
        (["--principal", acme], "--models"),
        (["--principal", acme, "--models", "tests.shop"], "module.path:Attribute"),
        (["--principal", acme, "--models", "tests.nowhere:Base"], "nowhere"),
    ):
        result = runner.invoke(app, ["schema", "--policy", str(good), *bad_args])
        assert result.exit_code == 2 and needle in result.output, result.output


def test_principal_from_file(tmp_path: Path) -> None:
    from ormai_agents.cli import parse_principal

    path = _write(tmp_path, "who.json", '{"tenant_id": "acme", "roles": ["support"]}')
    assert parse_principal(f"@{path}") == Principal(tenant_id="acme", roles=("support",))


@pytest.mark.slow
def test_console_script_is_declared_and_runs() -> None:
    import subprocess
    import sys
    import tomllib

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["ormai-agents"] == "ormai_agents.cli:main"
    out = subprocess.run([sys.executable, "-m", "ormai_agents.cli", "--help"], capture_output=True, text=True, cwd=root, check=False)
    assert out.returncode == 0 and "lint" in out.stdout and "schema" in out.stdout


# --- every command: help, version, and one-line errors ------------------------------------------


def test_help_lists_every_command_and_version() -> None:
    from ormai_agents import __version__
    from ormai_agents.cli._app import COMMANDS

    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    listed = result.output.split("Commands:")[1]
    assert sorted(
        line.split()[0] for line in listed.splitlines() if line.strip()
    ) == sorted(COMMANDS)
    assert {"demo", "schema", "lint", "rls", "audit"} <= set(COMMANDS)
    result = runner.invoke(app, ["--version"])
    assert (
        result.exit_code == 0 and result.output.strip() == f"ormai-agents {__version__}"
    )
    # Flags read as flags: no value shown after --json or --apply.
    for command, flag in (
        ("lint", "--json"),
        ("schema", "--json"),
        ("audit", "--json"),
        ("rls", "--apply"),
        ("demo", "--force"),
    ):
        text = runner.invoke(app, [command, "--help"]).output
        line = next(line for line in text.splitlines() if line.strip().startswith(flag))
        assert line.strip().split()[1][0].isupper(), (
            line
        )  # the help text follows, not a metavar like <bool>


def _one_line_error(args: list[str], *needles: str, cwd: Path | None = None) -> str:
    """Run the real command in a subprocess: exit 2, one line on stderr naming the cause."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "ormai_agents.cli", *args], capture_output=True, text=True, cwd=cwd or root,
                         env=env, timeout=120, check=False)  # fmt: skip
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_database_errors_name_their_cause(tmp_path: Path) -> None:
    policy = _write(tmp_path, "good.yaml", GOOD)
    shop_db = tmp_path / "shop.db"
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{shop_db}")
    shop.Base.metadata.create_all(engine)
    engine.dispose()
    closed = "postgresql://postgres@127.0.0.1:9/test"  # port 9 (discard): nothing listens there
    principal = '{"tenant_id": "acme"}'
    cases = [
        (["lint", "--db", closed, "--policy", str(policy)], "127.0.0.1:9", "refused"),
        (
            [
                "schema",
                "--db",
                closed,
                "--policy",
                str(policy),
                "--principal",
                principal,
            ],
            "127.0.0.1:9",
            "refused",
        ),
        (["rls", "--db", closed, "--policy", str(policy)], "127.0.0.1:9", "refused"),
        (
            ["audit", "--store", f"sql:{closed}", "--tenant", "acme"],
            "127.0.0.1:9",
            "refused",
        ),
        (
            [
                "lint",
                "--db",
                "postgresql://postgres@127.0.0.1:5432/ormai_no_such_db",
                "--policy",
                str(policy),
            ],
            "ormai_no_such_db",
        ),
        (
            [
                "lint",
                "--db",
                f"sqlite:///{tmp_path}/nowhere/x.db",
                "--policy",
                str(policy),
            ],
            "does not exist",
        ),
        (
            [
                "lint",
                "--db",
                "mysql+mysqldb://root@127.0.0.1:9/test",
                "--policy",
                str(policy),
            ],
            "MySQLdb",
            ".[mysql]",
        ),
        # mysql:// means MySQLdb, which no extra installs: the URL form of the extra's driver is named.
        (
            ["lint", "--db", "mysql://root@127.0.0.1:9/test", "--policy", str(policy)],
            "MySQLdb",
            'write the URL as mysql+pymysql://... and pip install -e ".[mysql]"',
        ),
        (["lint", "--db", "not a url", "--policy", str(policy)], "not a database URL"),
        (
            ["lint", "--db", "nosuchdialect://x", "--policy", str(policy)],
            "nosuchdialect",
        ),
        (
            [
                "lint",
                "--db",
                f"sqlite:///{shop_db}",
                "--policy",
                str(tmp_path / "missing.yaml"),
            ],
            "missing.yaml",
        ),
        (["lint", "--db", f"sqlite:///{shop_db}"], "--policy"),
        (
            [
                "lint",
                "--db",
                f"sqlite:///{shop_db}",
                "--policy",
                str(policy),
                "--bogus",
            ],
            "--bogus",
        ),
        (
            [
                "audit",
                "--store",
                "sql:postgresql+nosuchdriver://127.0.0.1:9/x",
                "--tenant",
                "acme",
            ],
            "nosuchdriver",
        ),
        (
            [
                "audit",
                "--store",
                f"jsonl:{tmp_path / 'none.jsonl'}",
                "--tenant",
                "acme",
            ],
            "none.jsonl",
        ),
        (["nosuchcommand"], "nosuchcommand"),
    ]
    for args, *needles in cases:
        _one_line_error(args, *needles)


def test_lint_on_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    policy = _write(tmp_path, "good.yaml", GOOD)
    line = _one_line_error(
        ["lint", "--db", "sqlite:///typo.db", "--policy", str(policy)],
        "typo.db",
        cwd=tmp_path,
    )
    assert "no SQLite database" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.yaml"]


def test_empty_policy_files_are_refused(tmp_path: Path) -> None:
    for name, text in (
        ("empty.yaml", ""),
        ("blank.yaml", "\n# nothing yet\n"),
        ("empty.json", "{}"),
    ):
        with pytest.raises(PolicyError, match="empty"):
            load_policy(_write(tmp_path, name, text))
        result = runner.invoke(
            app,
            [
                "schema",
                "--policy",
                str(tmp_path / name),
                "--principal",
                "{}",
                "--models",
                "tests.shop:Base",
            ],
        )
        assert result.exit_code == 2 and "empty" in result.output


def test_schema_names_the_valid_models_when_the_policy_names_another(
    tmp_path: Path,
) -> None:
    policy = _write(tmp_path, "typo.yaml", "models: {Ordr: {fields: {id: allow}}}")
    result = runner.invoke(
        app,
        [
            "schema",
            "--policy",
            str(policy),
            "--principal",
            "{}",
            "--models",
            "tests.shop:Base",
        ],
    )
    assert result.exit_code == 2
    assert (
        "Ordr" in result.output
        and "Order" in result.output
        and "Customer" in result.output
    )


def test_the_command_without_its_extra_names_the_extra() -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    # A finder that hides typer, as in an install without the cli extra.
    code = (
        "import sys, importlib.abc\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'typer':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from ormai_agents.cli import main\n"
        "main(['lint', '--help'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert (
        out.stderr.count("\n") == 1
        and "cli" in out.stderr
        and 'pip install -e ".[cli]"' in out.stderr
    )
