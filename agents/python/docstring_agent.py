"""An external agent in Python: docstring coverage of Python files.

    python3 agents/python/docstring_agent.py [--api tcp://127.0.0.1:7761]

Registers the capability `python.docstrings` with the local node; every task's result is
{"files": {path: {"documented": n, "total": n, "missing": ["name", ...]} | {"error": ...}},
 "documented": n, "total": n, "coverage": 0.0-1.0}, counting the module, every class and
every function or method. Files are parsed with this Python's `ast` (a file using newer
syntax than this interpreter knows is reported as an error, not a failure).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyagent_client import Client, ExternalAgent  # noqa: E402

CAPABILITY = "python.docstrings"


def coverage(text: str) -> dict:
    tree = ast.parse(text)
    documented, total, missing = 0, 0, []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            total += 1
            if ast.get_docstring(node) is not None:
                documented += 1
            else:
                missing.append(getattr(node, "name", "<module>"))
    return {"documented": documented, "total": total, "missing": sorted(set(missing))}


def handle(job: dict) -> dict:
    files, documented, total = {}, 0, 0
    for f in job["files"]:
        try:
            c = coverage(f["text"])
        except SyntaxError as e:
            files[f["path"]] = {"error": f"syntax error at line {e.lineno}: {e.msg}"}
            continue
        files[f["path"]] = c
        documented += c["documented"]
        total += c["total"]
    return {"files": files, "documented": documented, "total": total, "coverage": documented / total if total else 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", default=os.environ.get("PYAGENT_API_ENDPOINT", "tcp://127.0.0.1:7761"))
    parser.add_argument("--hang", action="store_true", help="take jobs and never answer (for failover tests)")
    args = parser.parse_args()
    agent = ExternalAgent(Client(args.api), "docstrings", [CAPABILITY])
    print(f"docstrings agent {agent.agent_id} serving {CAPABILITY} at {args.api}", flush=True)
    if args.hang:
        while True:
            job = agent.next_job()
            if job is not None:
                print(f"took {job['task_id']}", flush=True)
                time.sleep(3600)
    agent.serve(handle)


if __name__ == "__main__":
    main()
