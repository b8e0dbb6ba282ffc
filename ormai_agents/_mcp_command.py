"""`ormai-agents mcp`: serve a policy's tools over MCP (stdio, or streamable HTTP with bearer tokens).

Registered on the CLI's Typer app by `ormai_agents.cli`. Everything heavy (the `mcp` SDK, the
database driver, uvicorn) is imported when the command runs. Mistakes in the options end the
command with one line on stderr and exit code 2, before anything is served.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

TRANSPORTS = ("stdio", "streamable-http")
_PRINCIPAL_HELP = 'stdio: the principal as JSON (or @file.json), e.g. {"tenant_id": "acme", "user_id": "u-1"}'
_TOKENS_HELP = 'streamable-http: a JSON file mapping each bearer token to a principal: {"<token>": {"tenant_id": ...}}'


def mcp(
    policy: Annotated[Path, typer.Option("--policy", "-p", help="Policy file (.yaml, .yml or .json).")],
    models: Annotated[str, typer.Option("--models", "-m", help="Mapped classes to use: module.path:Base (or a list).")],
    db: Annotated[
        str, typer.Option(help="SQLAlchemy URL of the database (an async driver serves HTTP clients concurrently).")
    ],
    principal: Annotated[str | None, typer.Option(help=_PRINCIPAL_HELP)] = None,
    transport: Annotated[str, typer.Option(help="stdio (one client, one principal) or streamable-http.")] = "stdio",
    host: Annotated[str, typer.Option(help="streamable-http: address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="streamable-http: port to listen on.")] = 8765,
    tokens: Annotated[Path | None, typer.Option(help=_TOKENS_HELP)] = None,
    layout: Annotated[str, typer.Option(help="Tool layout: generic or per_model.")] = "generic",
    audit: Annotated[
        str | None,
        typer.Option(help="Keep the audit records: jsonl:PATH or sql:URL (as read by `ormai-agents audit`)."),
    ] = None,
) -> None:
    """Serve the policy's tools to MCP clients: one principal over stdio, or streamable HTTP with
    a principal per bearer token (the --tokens file is for development)."""
    from ormai_agents.cli import fail, load_models
    from ormai_agents.policy_file import load_policy

    if transport not in TRANSPORTS:
        raise fail(f"--transport is {' or '.join(TRANSPORTS)}")
    if layout not in ("generic", "per_model"):
        raise fail("--layout is generic or per_model")
    who, token_map = _principals(transport, principal, tokens)
    try:
        pol = load_policy(policy)
    except Exception as exc:  # noqa: BLE001 - a missing file, bad YAML, a policy error: one line
        raise fail(f"--policy {policy}: {_first_line(exc)}") from None
    try:
        source = load_models(models)
    except Exception as exc:  # noqa: BLE001 - an import error in the user's module: one line
        raise fail(f"--models {models}: {_first_line(exc)}") from None
    try:
        from ormai_agents.mcp import create_server
    except ImportError:
        raise fail('the MCP server needs the mcp extra: pip install "ormai-agents[mcp]"') from None
    from ormai_agents.toolset import Toolset

    audit_store = _audit_store(audit, fail)
    try:
        toolset = Toolset(source, pol, audit_store=audit_store)
    except Exception as exc:  # noqa: BLE001 - PolicyError or a bad model source
        raise fail(_first_line(exc)) from None
    engine, factory = _sessions(db, fail)
    listener = None
    if transport == "streamable-http":
        listener = _listen(host, port, fail)
        resolve = _resolver(token_map)
        server = create_server(toolset=toolset, session_factory=factory, principal_resolver=resolve, layout=layout)  # type: ignore[arg-type]
        bound = listener.getsockname()
        typer.echo(f"ormai-agents: serving MCP at http://{host}:{bound[1]}/mcp ({len(token_map)} tokens)", err=True)
        run = server.serve_http(host, bound[1], sockets=[listener])
    else:
        server = create_server(toolset=toolset, session_factory=factory, principal=who, layout=layout)  # type: ignore[arg-type]
        run = server.run_stdio()
    try:
        asyncio.run(_serve(run, engine, toolset))
    except KeyboardInterrupt:
        pass
    finally:
        if listener is not None:
            listener.close()


def _principals(transport: str, principal: str | None, tokens: Path | None) -> tuple[Any, dict[str, Any]]:
    """stdio: the one --principal; streamable-http: a principal per token of the --tokens file."""
    from ormai_agents.cli import fail, parse_principal

    if transport == "stdio":
        if tokens is not None:
            raise fail("--tokens is for --transport streamable-http; stdio serves the one --principal")
        if principal is None:
            raise fail("stdio serves one principal: give --principal '{\"tenant_id\": ...}'")
        try:
            return parse_principal(principal), {}
        except (ValueError, TypeError, OSError) as exc:
            raise fail(f"--principal: {exc}") from None
    if principal is not None:
        raise fail("--principal is for stdio; over streamable-http each token names its principal (--tokens)")
    if tokens is None:
        raise fail("streamable-http needs --tokens FILE (a JSON object: token -> principal)")
    return None, _load_tokens(tokens, parse_principal, fail)


async def _serve(run: Any, engine: Any, toolset: Any) -> None:
    try:
        await run
    finally:
        store = toolset.audit_store
        if store is not None and hasattr(store, "aclose"):
            await store.aclose()
        disposed = engine.dispose()
        if asyncio.iscoroutine(disposed):
            await disposed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _load_tokens(path: Path, parse_principal: Any, fail: Any) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise fail(f"--tokens {path}: {_first_line(exc)}") from None
    if not isinstance(data, dict) or not data:
        raise fail(f"--tokens {path}: a JSON object mapping each token to a principal")
    out: dict[str, Any] = {}
    for number, (token, value) in enumerate(data.items(), 1):
        # Errors name the entry by position: the file holds secrets, the terminal may not.
        if not isinstance(token, str) or len(token) < 16:
            raise fail(f"--tokens {path}: token #{number} is shorter than 16 characters")
        try:
            out[hashlib.sha256(token.encode()).hexdigest()] = parse_principal(json.dumps(value))
        except (ValueError, TypeError) as exc:
            raise fail(f"--tokens {path}: the principal of token #{number}: {exc}") from None
    return out


def _resolver(by_digest: dict[str, Any]) -> Any:
    def resolve(token: str) -> Any:
        digest = hashlib.sha256(token.encode()).hexdigest()
        for known, principal in by_digest.items():  # compare every entry, in constant time
            if hmac.compare_digest(known, digest):
                return principal
        return None

    return resolve


def _sessions(url: str, fail: Any) -> tuple[Any, Any]:
    """An engine and a session factory for `url` (async drivers get an async_sessionmaker), after
    one connection proves the database answers."""
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlalchemy.orm import sessionmaker

    from ormai_agents.cli._common import CliError, database_error, open_engine

    try:
        if _memory_sqlite(url):
            raise fail("--db: an in-memory SQLite database starts empty in the server; use a file (sqlite:///app.db)")
        # The other commands' checks: a URL, its driver installed (or the extra to install), an
        # existing SQLite file (serving never creates a database).
        open_engine(url).dispose()
        parsed = make_url(url)
        is_async = parsed.get_dialect().is_async
        engine: Any = create_async_engine(parsed) if is_async else create_engine(parsed)
    except CliError as exc:
        raise fail(str(exc)) from None
    except (ArgumentError, ImportError, ValueError) as exc:
        raise fail(f"--db: {_first_line(exc)}") from None

    async def probe_async() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))

    try:
        if is_async:
            asyncio.run(probe_async())
        else:
            with engine.connect() as conn:
                conn.execute(text("select 1"))
    except (SQLAlchemyError, OSError) as exc:
        raise fail(f"--db {database_error(exc, url)}") from None
    if is_async:
        # The probe ran on its own event loop; the server's connections belong to the next one.
        asyncio.run(engine.dispose())
        return engine, async_sessionmaker(engine)
    return engine, sessionmaker(engine)


def _memory_sqlite(url: str) -> bool:
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return False  # open_engine says what is wrong with it
    database = parsed.database or ""
    return parsed.get_backend_name() == "sqlite" and (
        database in ("", ":memory:") or "mode=memory" in database or parsed.query.get("mode") == "memory"
    )


def _audit_store(spec: str | None, fail: Any) -> Any:
    if spec is None:
        return None
    kind, sep, target = spec.partition(":")
    if not sep or not target or kind not in ("jsonl", "sql"):
        raise fail("--audit takes jsonl:PATH or sql:URL")
    from ormai_agents.audit import JsonlAuditStore, SqlAuditStore

    try:
        if kind == "jsonl":
            return JsonlAuditStore(target)
        from sqlalchemy import create_engine

        return SqlAuditStore(create_engine(target))
    except Exception as exc:  # noqa: BLE001 - a bad path or URL: one line
        raise fail(f"--audit: {_first_line(exc)}") from None


def _listen(host: str, port: int, fail: Any) -> socket.socket:
    """The listening socket, bound now so that a busy port is a clear error, not a server log."""
    from ormai_agents.mcp import is_loopback

    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], info[1])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(128)
    except OSError as exc:
        raise fail(f"can't listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    if not is_loopback(host):
        typer.echo(
            f"ormai-agents: warning: serving on {host}, beyond this machine, over plain HTTP; "
            "put TLS in front of it and use real tokens",
            err=True,
        )
    return sock
