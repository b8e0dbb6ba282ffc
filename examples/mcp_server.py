"""An MCP server over the demo shop, for any MCP client: a desktop or IDE assistant, a LangChain
agent through `langchain-mcp-adapters`, a LlamaIndex agent through `llama-index-tools-mcp`.

    python examples/mcp_server.py --tenant acme          # stdio, as acme's user ann
    python examples/mcp_server.py --http --port 8765     # streamable HTTP at http://127.0.0.1:8765/mcp

Over stdio, the client starts this script and every call runs as the one principal it was
started for. A client configuration (the `mcpServers` block most desktop clients read):

    {"mcpServers": {"shop": {"command": "python",
                             "args": ["/path/to/examples/mcp_server.py", "--tenant", "acme"]}}}

Over HTTP, each request runs as the principal of its bearer token (`API_KEYS` below stands in for
your application's own key store or token verification); a request without a valid token gets
401. Changing an order needs a person's approval: a client that supports elicitation asks its
user; otherwise the model hears `approval_required` with the approval id.

The shop is a SQLite file (`--db`, default `shop.db` in the current directory), created and seeded
on the first run. Needs `pip install -e ".[mcp]"` and, for HTTP, `aiosqlite` (in `[examples]`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from sqlalchemy import create_engine, inspect
from sqlalchemy.orm import Session, sessionmaker

from ormai_agents import Principal, Toolset, WriteAction
from ormai_agents.demo import Base, seed_shop
from ormai_agents.mcp import OrmAIMCPServer, create_server
from ormai_agents.policy_file import load_policy

POLICY_FILE = Path(__file__).with_name("shop_policy.yaml")
USERS = {"acme": Principal(tenant_id="acme", user_id="ann"), "globex": Principal(tenant_id="globex", user_id="gus")}
# Development keys: use your application's authentication instead (API keys, JWTs, ...).
API_KEYS = {"acme-dev-key-7f3a9c21e4": USERS["acme"], "globex-dev-key-5b8d0e6f12": USERS["globex"]}


def prepare(db_path: Path) -> None:
    """Create and seed the shop the first time."""
    engine = create_engine(f"sqlite:///{db_path}")
    try:
        if not inspect(engine).has_table("orders"):
            Base.metadata.create_all(engine)
            with Session(engine) as session:
                seed_shop(session)
    finally:
        engine.dispose()


def shop_toolset() -> Toolset:
    """The shop's policy, with one change: updating an order needs a person's approval."""
    policy = load_policy(POLICY_FILE)
    order = policy.models["Order"]
    writes = order.write_policy.model_copy(update={"update": WriteAction.RequireApproval})
    models = {**policy.models, "Order": order.model_copy(update={"write_policy": writes})}
    return Toolset(Base, policy.model_copy(update={"models": models}))


def stdio_server(db_path: Path, tenant: str) -> OrmAIMCPServer:
    prepare(db_path)
    factory = sessionmaker(create_engine(f"sqlite:///{db_path}"))
    return create_server(toolset=shop_toolset(), session_factory=factory, principal=USERS[tenant])


def http_server(db_path: Path) -> OrmAIMCPServer:
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    prepare(db_path)
    factory = async_sessionmaker(create_async_engine(f"sqlite+aiosqlite:///{db_path}"))

    def resolve(token: str) -> Principal | None:  # may also be async (a database or JWKS lookup)
        return API_KEYS.get(token)

    return create_server(toolset=shop_toolset(), session_factory=factory, principal_resolver=resolve)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenant", choices=sorted(USERS), default="acme", help="stdio: whose tools these are")
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--db", type=Path, default=Path("shop.db"))
    args = parser.parse_args()
    if args.http:
        print(f"MCP at http://127.0.0.1:{args.port}/mcp; bearer tokens: {', '.join(API_KEYS)}", file=sys.stderr)
        asyncio.run(http_server(args.db).serve_http("127.0.0.1", args.port))
    else:  # stdout carries the protocol: nothing else may be printed there
        asyncio.run(stdio_server(args.db, args.tenant).run_stdio())


if __name__ == "__main__":
    main()
