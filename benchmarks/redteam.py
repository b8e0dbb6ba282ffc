"""A long round of the hostile harness (tests/redteam_harness.py), counting the calls it sends.

    python -m benchmarks.redteam                     # 1000 hypothesis examples per backend and session kind
    python -m benchmarks.redteam -n 3000 -k mysql    # more, on one backend

Runs `tests/test_redteam.py` under pytest with `ORMAI_REDTEAM_EXAMPLES=n` (the suite runs a
few per backend) and prints how many calls went to each backend, session kind and adapter
(kernel: what LangChain and LlamaIndex run; langchain: tool `ainvoke`; mcp: the official client
against the MCP server; concurrent: one example's reads at once), and how many were refused.
Every call is checked against the database as in the suite; a failure stops the round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1000, help="hypothesis examples per backend and session kind")
    parser.add_argument("-k", default="", help="pytest -k expression (a backend: sqlite, postgres, mysql)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        env = {**os.environ, "ORMAI_REDTEAM_EXAMPLES": str(args.n), "ORMAI_REDTEAM_REPORT": str(report)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_redteam.py"]
        if args.k:
            command += ["-k", args.k]
        done = subprocess.run(command, env=env, cwd=Path(__file__).resolve().parent.parent, check=False)
        if not report.exists():
            return done.returncode or 1
        counts = json.loads(report.read_text())
    by_backend: dict[str, int] = defaultdict(int)
    for label, n in sorted(counts["calls"].items()):
        print(f"{label:32} {n:8}")
        by_backend[label.split("-")[0]] += n
    for backend, n in by_backend.items():
        print(f"{backend + ' (all)':32} {n:8}")
    print(f"{'answers / refusals':32} {counts['outcomes'].get('ok', 0):8} / {counts['outcomes'].get('error', 0)}")
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
