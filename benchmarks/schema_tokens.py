"""How many tokens the LangChain tool schemas cost, and how fast `get_tools(principal)` is.

    python -m benchmarks.schema_tokens                 # token table
    python -m benchmarks.schema_tokens --get-tools     # plus get_tools timing on 200 models

Tokens are counted on what the model is given: `convert_to_openai_tool(tool)` for every tool of
`OrmAIToolkit.get_tools(principal)`, serialized as compact JSON. Providers render tool
definitions in their own formats, so treat the numbers as the size of the schemas, not an exact
bill. Encodings: tiktoken's `o200k_base` and `cl100k_base`, loaded offline from the copy that
llama-index-core ships (`llama_index/core/_static/tiktoken_cache`); when tiktoken or that copy
is missing, the script says so and falls back to characters / 4.

Policies:
- 3 models: tenants, users and orders scoped by tenant; orders may be created (`auto_set`
  tenant_id, tenant_id immutable).
- synthetic 50: 50 models of 9 columns (one denied, one masked), scoped by tenant, each with a
  relationship to the next; read-only, then with create and update allowed on every model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import random
import statistics
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import Column, DateTime, ForeignKey, Integer, Numeric, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ormai_agents import FieldAction, FieldPolicy, ModelPolicy, Policy, Principal, Toolset, WriteAction, WritePolicy

PRINCIPAL = Principal(tenant_id="acme-corp", user_id="user-123")


# --- 3 models: tenants, users, orders ----------------------------------------------------------


class GuideBase(DeclarativeBase):
    pass


class Tenant(GuideBase):
    __tablename__ = "tenants"
    id = Column(String, primary_key=True)
    name = Column(String, nullable=False)


class User(GuideBase):
    __tablename__ = "users"
    id = Column(String, primary_key=True)
    tenant_id = Column(String, ForeignKey("tenants.id"), nullable=False)
    email = Column(String, nullable=False)


class Order(GuideBase):
    __tablename__ = "orders"
    id = Column(Integer, primary_key=True)
    tenant_id = Column(String, ForeignKey("tenants.id"), nullable=False)
    user_id = Column(String, ForeignKey("users.id"), nullable=False)
    status = Column(String)


def guide_toolset() -> Toolset:
    allow = FieldPolicy(action=FieldAction.Allow)
    policy = Policy(
        models={
            "User": ModelPolicy(
                allowed=True,
                fields={"id": allow, "tenant_id": allow, "email": allow},
                scoping={"tenant_id": "principal.tenant_id"},
            ),
            "Order": ModelPolicy(
                allowed=True,
                fields={"id": allow, "tenant_id": allow, "user_id": allow, "status": allow},
                scoping={"tenant_id": "principal.tenant_id"},
                write_policy=WritePolicy(
                    create=WriteAction.Allow,
                    auto_set={"tenant_id": "principal.tenant_id"},
                    immutable_fields=["tenant_id"],
                ),
            ),
            "Tenant": ModelPolicy(
                allowed=True,
                fields={"id": allow, "name": allow},
                scoping={"id": "principal.tenant_id"},
                write_policy=WritePolicy(create=WriteAction.Deny, update=WriteAction.Deny, delete=WriteAction.Deny),
            ),
        }
    )
    return Toolset(GuideBase, policy, secret_key=b"b" * 32)


# --- synthetic models ------------------------------------------------------------------------


def synthetic_toolset(n: int, writes: bool) -> Toolset:
    class Base(DeclarativeBase):
        pass

    names = [f"Entity{i:03d}" for i in range(n)]
    classes: list[type] = []
    for i, name in enumerate(names):
        attrs: dict[str, Any] = {
            "__tablename__": f"entity_{i:03d}",
            "__annotations__": {},
            "id": mapped_column(Integer, primary_key=True),
            "tenant_id": mapped_column(String(40), index=True),
            "name": mapped_column(String(100)),
            "status": mapped_column(String(20)),
            "amount": mapped_column(Numeric(12, 2)),
            "quantity": mapped_column(Integer, nullable=True),
            "created_at": mapped_column(DateTime, nullable=True),
            "contact_email": mapped_column(String(200), nullable=True),
            "internal_notes": mapped_column(Text, nullable=True),
        }
        if i + 1 < n:
            attrs["next_id"] = mapped_column(ForeignKey(f"entity_{i + 1:03d}.id"), nullable=True)
            attrs["next"] = relationship(names[i + 1], foreign_keys=[attrs["next_id"]])
        classes.append(type(name, (Base,), attrs))
    write = (
        WritePolicy(
            create=WriteAction.Allow,
            update=WriteAction.Allow,
            auto_set={"tenant_id": "principal.tenant_id"},
            immutable_fields=["tenant_id"],
        )
        if writes
        else WritePolicy()
    )
    models = {}
    for i, name in enumerate(names):
        fields: dict[str, Any] = {
            f: FieldAction.Allow for f in ("id", "tenant_id", "name", "status", "amount", "quantity", "created_at")
        }
        fields["contact_email"] = FieldPolicy(action=FieldAction.Mask)
        fields["internal_notes"] = FieldAction.Deny
        if i + 1 < n:
            fields["next_id"] = FieldAction.Allow
        models[name] = ModelPolicy(fields=fields, scoping={"tenant_id": "principal.tenant_id"}, write_policy=write)
    return Toolset(Base, Policy(models=models), secret_key=b"b" * 32)


# --- counting --------------------------------------------------------------------------------


def counters() -> tuple[dict[str, Callable[[str], int]], str]:
    """Token counters by encoding name, and a note on where they came from."""
    spec = importlib.util.find_spec("llama_index.core")
    if spec is not None and spec.submodule_search_locations and "TIKTOKEN_CACHE_DIR" not in os.environ:
        cache = Path(next(iter(spec.submodule_search_locations))) / "_static" / "tiktoken_cache"
        if cache.is_dir():
            os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        import tiktoken

        out = {}
        for name in ("o200k_base", "cl100k_base"):
            enc = tiktoken.get_encoding(name)
            out[name] = lambda text, enc=enc: len(enc.encode(text))
        return out, f"tiktoken (cache: {os.environ.get('TIKTOKEN_CACHE_DIR', 'default')})"
    except Exception as exc:  # no tiktoken, or no offline copy of the encodings
        return {"chars/4": lambda text: (len(text) + 3) // 4}, f"chars/4 estimate (tiktoken unavailable: {type(exc).__name__})"


def schemas(toolset: Toolset, layout: str) -> list[dict[str, Any]]:
    from langchain_core.utils.function_calling import convert_to_openai_tool
    from sqlalchemy.orm import sessionmaker

    from ormai_agents.langchain import OrmAIToolkit

    toolkit = OrmAIToolkit(toolset=toolset, session_factory=sessionmaker(), layout=layout)  # type: ignore[arg-type]
    return [convert_to_openai_tool(t) for t in toolkit.get_tools(PRINCIPAL)]


def token_table() -> None:
    count, source = counters()
    cases = [
        ("3 models", guide_toolset()),
        ("synthetic 50, read-only", synthetic_toolset(50, writes=False)),
        ("synthetic 50, create+update", synthetic_toolset(50, writes=True)),
    ]
    heads = ["policy", "layout", "tools", "chars"] + [f"tokens {n}" for n in count] + ["largest tool (tokens)"]
    print(f"token counts: {source}\n")
    print(" | ".join(heads))
    print(" | ".join("---" for _ in heads))
    for label, toolset in cases:
        for layout in ("generic", "per_model"):
            tools = schemas(toolset, layout)
            text = json.dumps(tools, separators=(",", ":"), ensure_ascii=False)
            first = next(iter(count.values()))
            largest = max(tools, key=lambda t: first(json.dumps(t, separators=(",", ":"))))
            cells = [label, layout, str(len(tools)), str(len(text))]
            cells += [str(fn(text)) for fn in count.values()]
            cells.append(f"{largest['function']['name']} ({first(json.dumps(largest, separators=(',', ':')))})")
            print(" | ".join(cells))


# --- results ---------------------------------------------------------------------------------


class ResultBase(DeclarativeBase):
    pass


class ShopOrder(ResultBase):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    customer_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    total: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)


RESULT_COLUMNS = ["id", "tenant_id", "customer_id", "status", "total", "created_at"]


def result_engine(path: Path) -> Any:
    """3 tenants x 60 orders in a SQLite file, the same every run."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    engine = create_engine(f"sqlite:///{path}")
    ResultBase.metadata.create_all(engine)
    rng = random.Random(15)
    base = dt.datetime(2026, 3, 1, 9, 0, 0)
    rows = []
    for i in range(180):
        rows.append(
            ShopOrder(
                id=i + 1,
                tenant_id=("acme-corp", "globex", "initech")[i % 3],
                customer_id=rng.randint(1, 40),
                status=rng.choice(["pending", "paid", "shipped", "cancelled", "refunded"]),
                total=Decimal(rng.randint(500, 99_999)) / 100,
                created_at=base + dt.timedelta(minutes=rng.randint(0, 60 * 24 * 90), seconds=rng.randint(0, 59)),
            )
        )
    with Session(engine) as session:
        session.add_all(rows)
        session.commit()
    return engine


def result_table() -> None:
    """One 50-row page of six columns: our tool's text against LangChain's SQL database tool's."""
    import tempfile
    import warnings

    from sqlalchemy.orm import sessionmaker

    from ormai_agents._toolspecs import jsonable
    from ormai_agents.langchain import OrmAIToolkit

    count, source = counters()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # langchain-community announces its own sunset
            from langchain_community.tools.sql_database.tool import QuerySQLDatabaseTool
            from langchain_community.utilities import SQLDatabase
    except ImportError:
        print("\nresults: skipped (pip install langchain-community for LangChain's SQLDatabase tool)")
        return
    policy = Policy(
        models={
            "ShopOrder": ModelPolicy(
                fields=dict.fromkeys(RESULT_COLUMNS, FieldAction.Allow), scoping={"tenant_id": "principal.tenant_id"}
            )
        }
    )
    toolset = Toolset([ShopOrder], policy, secret_key=b"b" * 32)
    with tempfile.TemporaryDirectory() as tmp:
        engine = result_engine(Path(tmp) / "orders.db")
        cases = [("6 columns (tenant_id among them)", RESULT_COLUMNS), ("5 columns (no tenant_id)", RESULT_COLUMNS[:1] + RESULT_COLUMNS[2:])]
        print(f"\nresults: one page of 50 orders of one tenant; token counts: {source}\n")
        heads = ["selection", "output", "chars"] + [f"tokens {n}" for n in count] + ["x SQLDatabase (o200k_base)"]
        print(" | ".join(heads))
        print(" | ".join("---" for _ in heads))
        for label, columns in cases:
            sql = f"SELECT {', '.join(columns)} FROM orders WHERE tenant_id = 'acme-corp' ORDER BY id LIMIT 50"
            theirs = QuerySQLDatabaseTool(db=SQLDatabase(engine)).invoke(sql)
            outputs = [("LangChain SQLDatabase tool", theirs)]
            for layout in ("generic", "per_model"):
                tools = {t.name: t for t in OrmAIToolkit(toolset=toolset, session_factory=sessionmaker(engine), layout=layout).get_tools(PRINCIPAL)}  # type: ignore[arg-type]
                args: dict[str, Any] = {"select": columns, "limit": 50}
                tool = tools["query"] if layout == "generic" else tools["query_shop_order"]
                if layout == "generic":
                    args["model"] = "ShopOrder"
                text = tool.invoke(args)
                assert len(json.loads(text)["rows"]) == 50
                outputs.append((f"ormai-agents query ({layout})", text))
            page = json.loads(outputs[1][1])
            records = [{**page.get("same_for_all_rows", {}), **dict(zip(page["columns"], r))} for r in page["rows"]]
            before = json.dumps(jsonable({"rows": records, "next_cursor": page.get("next_cursor")}), ensure_ascii=False, separators=(",", ":"))
            outputs.append(("ormai-agents, records as objects (before)", before))
            first = next(iter(count.values()))
            reference = first(theirs)
            for name, text in outputs:
                cells = [label, name, str(len(text))] + [str(fn(text)) for fn in count.values()]
                cells.append(f"{first(text) / reference:.2f}")
                print(" | ".join(cells))
        engine.dispose()


def get_tools_timing(n: int = 200, repeat: int = 200) -> None:
    from sqlalchemy.orm import sessionmaker

    from ormai_agents.langchain import OrmAIToolkit

    print(f"\nget_tools(principal) on {n} models (create+update allowed), median of {repeat} calls after the first")
    toolset = synthetic_toolset(n, writes=True)
    for layout in ("generic", "per_model"):
        toolkit = OrmAIToolkit(toolset=toolset, session_factory=sessionmaker(), layout=layout)  # type: ignore[arg-type]
        started = time.perf_counter()
        tools = toolkit.get_tools(PRINCIPAL)
        first = time.perf_counter() - started
        times = []
        for i in range(repeat):
            principal = Principal(tenant_id=f"t{i}", user_id="u")
            started = time.perf_counter()
            toolkit.get_tools(principal)
            times.append(time.perf_counter() - started)
        print(
            f"{layout}: {len(tools)} tools; first call {first * 1000:.1f} ms (builds the specs and tools); "
            f"then median {statistics.median(times) * 1000:.2f} ms, p95 {sorted(times)[int(repeat * 0.95)] * 1000:.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--get-tools", action="store_true", help="also time get_tools(principal) on 200 models")
    args = parser.parse_args()
    token_table()
    result_table()
    if args.get_tools:
        get_tools_timing()


if __name__ == "__main__":
    main()
