"""The package's promises about imports and public names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_import_pulls_in_no_framework() -> None:
    code = (
        "import sys, ormai_agents, ormai_agents.core, ormai_agents.policy, ormai_agents.audit;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('langchain', 'langchain_core', 'langgraph', 'llama_index'));"
        "print(','.join(bad))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    assert out.stdout.strip() == ""


# Run in a fresh interpreter: `import ormai_agents`, then a call of a toolset built with rls=True
# on PostgreSQL (the settings are set, on a temporary table no other run sees).
_FRESH = r"""
import asyncio, json, sys
import ormai_agents
after_import = sorted(sys.modules)
from sqlalchemy import Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from ormai_agents import FieldAction, ModelPolicy, Policy, Principal, RunContext, Toolset

class Base(DeclarativeBase):
    pass

class Item(Base):
    __tablename__ = "ormai_fresh_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(20))

fields = {"id": FieldAction.Allow, "tenant_id": FieldAction.Allow}
policy = Policy(models={"Item": ModelPolicy(fields=fields, scoping={"tenant_id": "principal.tenant_id"})})
toolset = Toolset(Base, policy, rls=True)
with create_engine(sys.argv[1]).connect() as conn:
    conn.exec_driver_sql("CREATE TEMPORARY TABLE ormai_fresh_items (id integer PRIMARY KEY, tenant_id varchar(20))")
    conn.exec_driver_sql("INSERT INTO ormai_fresh_items VALUES (1, 'acme'), (2, 'globex')")
    with Session(bind=conn) as session:
        ctx = RunContext(Principal(tenant_id="acme"), session)
        page = asyncio.run(toolset.query(ctx, model="Item"))
        tenant = session.connection().exec_driver_sql("SELECT current_setting('ormai.tenant_id', true)").scalar()
print(json.dumps({"after_import": after_import, "after_call": sorted(sys.modules), "rows": page.rows,
                  "tenant_setting": tenant}))
"""
# What `import ormai_agents` and a call must not load: the command line, lint and reflection,
# the RLS DDL generator, eval, the demo, and any framework or optional extra.
TOOL_MODULES = ("ormai_agents.cli", "ormai_agents.lint", "ormai_agents._reflect", "ormai_agents.rls",
                "ormai_agents.eval", "ormai_agents.demo", "ormai_agents.testing")  # fmt: skip
EXTRAS = ("langchain", "langchain_core", "langgraph", "llama_index", "mcp", "typer", "rich", "yaml", "cryptography",
          "starlette", "uvicorn", "httpx", "fastapi", "pymysql", "aiomysql", "asyncpg", "psycopg", "aiosqlite")  # fmt: skip


@pytest.mark.slow
def test_import_and_a_call_load_no_tool_module_and_no_extra() -> None:
    from tests.conftest import pg_url, require_postgres

    require_postgres()
    url = pg_url("psycopg").render_as_string(hide_password=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _FRESH, url], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout)

    def loaded(names: list[str], prefixes: tuple[str, ...]) -> list[str]:
        return [m for m in names if any(m == p or m.startswith(p + ".") for p in prefixes)]

    assert loaded(seen["after_import"], TOOL_MODULES + EXTRAS) == []
    # The call ran under row-level security settings, loading only their runtime half.
    assert seen["rows"] == [{"id": 1, "tenant_id": "acme"}] and seen["tenant_setting"] == "acme"
    assert "ormai_agents._rls_settings" in seen["after_call"]
    assert loaded(seen["after_call"], TOOL_MODULES) == []


def test_public_names() -> None:
    import ormai_agents
    from ormai_agents import core, policy

    for name in ("Principal", "RunContext", "OrmAIError", "ModelNotAllowedError", "FieldNotAllowedError",
                 "RecordNotFoundError", "WriteNotAllowedError", "ValidationError", "PolicyError"):  # fmt: skip
        assert getattr(core, name) is getattr(ormai_agents, name)
    for name in ("Policy", "ModelPolicy", "FieldPolicy", "FieldAction", "RowPolicy", "WritePolicy", "WriteAction"):
        assert getattr(policy, name) is getattr(ormai_agents, name)
    assert ormai_agents.Toolset is not None
    codes = {core.ModelNotAllowedError.code, core.FieldNotAllowedError.code, core.RecordNotFoundError.code,
             core.WriteNotAllowedError.code, core.ValidationError.code, core.PolicyError.code}  # fmt: skip
    assert len(codes) == 6


# --- the wheel, installed alone in a fresh virtual environment, on every declared Python -----------


def _declared_pythons() -> list[str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    prefix = "Programming Language :: Python :: 3."
    minors = sorted(int(c[len(prefix) :]) for c in project["classifiers"] if c.startswith(prefix) and c[len(prefix) :].isdigit())
    lowest = int(project["requires-python"].removeprefix(">=3."))
    assert minors and minors[0] == lowest, "requires-python and the classifiers disagree"
    return [f"3.{m}" for m in minors]


def _interpreter(version: str) -> str | None:
    import glob
    import shutil

    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    # pyenv's own interpreters first: its shims answer only for the selected versions.
    installed = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    on_path = shutil.which(f"python{version}")
    return installed[-1] if installed else (on_path if on_path and "/shims/" not in on_path else None)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (path,) = out.glob("ormai_agents-*.whl")
    return path


# Run by the fresh interpreter, outside the repository: the core alone scopes a query.
SCOPED_QUERY = """
import asyncio, sys
import sqlalchemy.ext.asyncio  # needs greenlet, which the core declares
import ormai_agents
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from ormai_agents import ModelPolicy, Policy, Principal, RunContext, Toolset

assert "site-packages" in ormai_agents.__file__, ormai_agents.__file__
assert not [m for m in sys.modules if m.split(".")[0] in ("langchain", "langchain_core", "llama_index", "typer", "rich", "yaml", "mcp")]

class Base(DeclarativeBase):
    pass

class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(20))

engine = create_engine("sqlite:///orders.db")
Base.metadata.create_all(engine)
with Session(engine) as session:
    session.add_all([Order(id=1, tenant_id="acme"), Order(id=2, tenant_id="globex")])
    session.commit()
    toolset = Toolset(Base, Policy(models={"Order": ModelPolicy(fields={"id": "allow"}, scoping={"tenant_id": "principal.tenant_id"})}))
    rows = asyncio.run(toolset.query(RunContext(principal=Principal(tenant_id="acme"), db=session), model="Order")).rows
print(rows)
"""


@pytest.mark.slow
@pytest.mark.parametrize("version", _declared_pythons())
def test_the_wheel_alone_imports_and_scopes_on_each_declared_python(version: str, wheel: Path, tmp_path: Path) -> None:
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    install = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                             capture_output=True, text=True, env=env, timeout=900, check=False)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "work"
    work.mkdir()
    (work / "scoped.py").write_text(SCOPED_QUERY, encoding="utf-8")
    run = subprocess.run([str(bin_dir / "python"), "scoped.py"],
                         capture_output=True, text=True, cwd=work, env=env, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "[{'id': 1}]"
    # The command exists in the base install and says which extra it needs, in one line.
    cli = subprocess.run([str(bin_dir / "ormai-agents"), "demo"],
                         capture_output=True, text=True, cwd=work, env=env, timeout=300, check=False)  # fmt: skip
    assert cli.returncode == 2 and cli.stdout == "" and "Traceback" not in cli.stderr
    assert cli.stderr.count("\n") == 1 and "'cli' extra" in cli.stderr and 'pip install -e ".[cli]"' in cli.stderr


def test_metadata_and_extras_are_what_the_docs_say() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "MIT" and (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    extras = project["optional-dependencies"]
    # `all` is both adapters and the command (what the demo needs), nothing more: see docs/install.md.
    assert extras["all"] == ["ormai-agents[langchain,llamaindex,cli]"]
    names = {extra: " ".join(deps) for extra, deps in extras.items()}
    for extra, needed in {"cli": ("typer", "rich", "pyyaml"), "postgres": ("psycopg", "asyncpg"), "mysql": ("pymysql",),
                          "examples": ("fastapi", "uvicorn", "httpx", "aiosqlite"), "notebooks": ("jupyterlab",),
                          "docs": ("mkdocs-material", "mkdocstrings"), "mcp": ("mcp",)}.items():  # fmt: skip
        assert all(n in names[extra] for n in needed), extra
    install = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    assert all(f"| `{extra}` |" in install for extra in extras), "docs/install.md lists every extra"
