"""The package's layering, as docs/architecture.md describes it.

The runtime import graph (module-level imports; those under `if TYPE_CHECKING:` and inside
functions excluded) has no cycle, and the framework-neutral core imports no adapter.
"""

from __future__ import annotations

import ast
import importlib
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ormai_agents"
CORE = ("toolset", "_call", "_reads", "_writes", "_write_plan", "_runtime", "_db", "_plan", "_inputs", "_budget")
ADAPTERS = ("ormai_agents.langchain", "ormai_agents.llamaindex", "ormai_agents.mcp", "ormai_agents.cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.Module, module: str, modules: set[str]) -> set[str]:
    """The package modules `module` imports when it is loaded."""
    out: set[str] = set()
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If):
            if not _is_type_checking(node):
                stack += node.body + node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            out |= _from_import(node, module, modules)
    out.discard(module)
    return out


def _from_import(node: ast.ImportFrom, module: str, modules: set[str]) -> set[str]:
    base = node.module or ""
    if node.level:  # relative: from the package holding `module`
        package = module.split(".")[: -node.level]
        base = ".".join([*package, base]) if base else ".".join(package)
    out = set()
    for alias in node.names:
        if f"{base}.{alias.name}" in modules:
            out.add(f"{base}.{alias.name}")  # a submodule
        elif base in modules:
            out.add(base)
    return out


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    return {
        _module_name(p): _runtime_imports(ast.parse(p.read_text(encoding="utf-8")), _module_name(p), modules)
        for p in paths
    }


def test_the_runtime_import_graph_is_acyclic() -> None:
    graph = import_graph()
    assert len(graph) > 30 and graph["ormai_agents.toolset"]  # the walk found the package
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:  # pragma: no cover - the failure message
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    assert set(order) == set(graph)


def test_the_core_imports_no_adapter() -> None:
    graph = import_graph()
    for name in CORE:
        seen, todo = set(), [f"ormai_agents.{name}"]
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo += graph[module]
        assert not [m for m in seen if m.startswith(ADAPTERS)], name


def test_every_name_the_architecture_page_cites_exists() -> None:
    """`module.name` and `Class.method` in docs/architecture.md name real code (a rename updates the page)."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = {}
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem not in ("__init__", "__main__", "langchain", "llamaindex", "mcp", "_mcp_command"):
            modules[path.stem] = importlib.import_module(f"ormai_agents.{path.stem}")
    cited = set(re.findall(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)", text))
    missing = []
    for name in sorted(cited):
        first, *rest = name.split(".")
        if rest[-1] in ("py", "toml", "md", "yml") or first == "ctx":
            continue  # a file, or the call's context argument
        owners = [modules[first]] if first in modules else [m for m in modules.values() if hasattr(m, first)]
        roots = owners if first in modules else [getattr(m, first) for m in owners]
        if not any(_resolves(root, rest) for root in roots):
            missing.append(name)
    assert len(cited) > 40 and not missing, missing


def _resolves(obj: object, attrs: list[str]) -> bool:
    for attr in attrs:
        if not hasattr(obj, attr):
            return False
        obj = getattr(obj, attr)
    return True
