"""`ormai-agents mcp`: every mistake in its options is one line on stderr and exit code 2,
before anything is served; never a traceback."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ormai_agents.cli import app

ROOT = Path(__file__).resolve().parents[1]
POLICY = str(ROOT / "examples" / "shop_policy.yaml")
ACME = '{"tenant_id": "acme", "user_id": "ann"}'


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["mcp", *args])
    return result.exit_code, result.stderr


@pytest.fixture
def base(tmp_path: Path) -> list[str]:
    from sqlalchemy import create_engine

    from ormai_agents.demo import Base

    url = f"sqlite:///{tmp_path / 'shop.db'}"  # an existing database: the command never creates one
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    return ["--policy", POLICY, "--models", "ormai_agents.demo:Base", "--db", url]


def tokens_file(tmp_path: Path, data: object) -> str:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], "stdio serves one principal"),
        (["--principal", "{tenant_id: acme"], "--principal"),
        (["--principal", '{"tenant_id": "acme", "is_admin": true}'], "unknown principal keys: is_admin"),
        (["--principal", "@/nonexistent/principal.json"], "--principal"),
        (["--principal", ACME, "--transport", "sse"], "--transport is stdio or streamable-http"),
        (["--principal", ACME, "--tokens", "tokens.json"], "--tokens is for --transport streamable-http"),
        (["--transport", "streamable-http"], "streamable-http needs --tokens"),
        (["--transport", "streamable-http", "--principal", ACME], "--principal is for stdio"),
        (["--principal", ACME, "--layout", "flat"], "--layout is generic or per_model"),
        (["--principal", ACME, "--audit", "s3://bucket"], "--audit takes jsonl:PATH or sql:URL"),
    ],
)
def test_option_mistakes(base: list[str], extra: list[str], expected: str) -> None:
    code, err = run(*base, *extra)
    assert code == 2 and expected in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("{not json", "--tokens"),
        ([], "a JSON object mapping each token to a principal"),
        ({"short": {"tenant_id": "acme"}}, "token #1 is shorter than 16 characters"),
        ({"a-long-enough-token-1": {"tenant_id": "acme"}, "a-long-enough-token-2": "acme"}, "the principal of token #2"),
    ],
)
def test_token_file_mistakes_never_show_a_token(base: list[str], tmp_path: Path, data: object, expected: str) -> None:
    code, err = run(*base, "--transport", "streamable-http", "--tokens", tokens_file(tmp_path, data))
    assert code == 2 and expected in err and err.strip().count("\n") == 0
    assert "a-long-enough-token" not in err and "short" not in err.replace("shorter", "")


def test_policy_models_and_database_mistakes(base: list[str], tmp_path: Path) -> None:
    cases = [
        (["--policy", str(tmp_path / "missing.yaml")], "--policy"),
        (["--models", "no_such_module_xyz:Base"], "--models no_such_module_xyz:Base"),
        (["--models", "ormai_agents.demo"], "--models"),
        (["--db", "not a url"], "--db"),
        (["--db", "nosuchdialect://x"], "--db"),
        (["--db", "sqlite://"], "an in-memory SQLite database starts empty"),
        (["--db", "sqlite+aiosqlite:///:memory:"], "an in-memory SQLite database starts empty"),
        (["--db", "sqlite:///file:shop?mode=memory&uri=true"], "an in-memory SQLite database starts empty"),
        # What the database says, in one line: a closed local port (both drivers), a missing
        # SQLite file (never created), a URL whose driver no extra installs.
        (["--db", "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2"], "port 1 failed: Connection refused"),
        (["--db", "postgresql+asyncpg://postgres@127.0.0.1:1/test"], "Connect call failed"),
        (["--db", f"sqlite:///{tmp_path / 'typo.db'}"], "no SQLite database at"),
        (["--db", f"sqlite+aiosqlite:///{tmp_path / 'typo.db'}"], "no SQLite database at"),
        (["--db", "mysql://root@127.0.0.1:1/test"], 'write the URL as mysql+pymysql://... and pip install -e ".[mysql]"'),
    ]
    for override, expected in cases:
        args = list(base)
        flag = override[0]
        args[args.index(flag) + 1] = override[1]
        code, err = run(*args, "--principal", ACME)
        assert code == 2 and expected in err, (override, err)
        assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert not (tmp_path / "typo.db").exists()


def test_a_busy_port_is_a_clear_error(base: list[str], tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        tokens = tokens_file(tmp_path, {"a-long-enough-token-1": {"tenant_id": "acme"}})
        code, err = run(*base, "--transport", "streamable-http", "--port", str(port), "--tokens", tokens)
    assert code == 2 and f"can't listen on 127.0.0.1:{port}" in err and err.strip().count("\n") == 0
