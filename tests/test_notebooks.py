"""The notebooks run headless and offline from their own folder, as Jupyter started there runs
them, and are stored executed (outputs included), so they read like pages.

To store them again after a change: `python tests/test_notebooks.py` (runs each from notebooks/
and writes the outputs back).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("*.ipynb"))


def execute(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel whose working directory is notebooks/, as under Jupyter."""
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT)  # this checkout's ormai_agents, whatever is installed
    try:
        NotebookClient(nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(FOLDER)}}).execute()
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous
    return nb


def _errors(nb: nbformat.NotebookNode) -> list[str]:
    return [f"{o.ename}: {o.evalue}" for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


def test_the_notebooks_are_there() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {"01_quickstart.ipynb", "02_multi_tenant_guide.ipynb", "03_llamaindex.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_executed(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and [c.execution_count for c in code] == list(range(1, len(code) + 1)), "store it executed, top to bottom"
    assert any(c.outputs for c in code)
    assert _errors(nb) == []
    text = path.read_text(encoding="utf-8")
    assert str(ROOT) not in text, "a stored output shows a path of this machine"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_from_its_folder(path: Path) -> None:
    nb = execute(nbformat.read(path, as_version=4))
    assert _errors(nb) == []
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")


if __name__ == "__main__":
    for notebook in sys.argv[1:] or [str(p) for p in NOTEBOOKS]:
        executed = execute(nbformat.read(notebook, as_version=4))
        if _errors(executed):
            raise SystemExit(f"{notebook}: {_errors(executed)}")
        nbformat.write(executed, notebook)
        print("stored", notebook)
