"""Overhead of one trivial task through the swarm: task.submit -> result, repeated.

Usage: python3 bench_task_overhead.py ENDPOINT [COUNT]   (run where the node's API is)
Prints one JSON line: {"count", "median_ms", "p90_ms", "min_ms", "max_ms", "executors"}.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "agents", "python"))
from pyagent_client import Client  # noqa: E402

endpoint = sys.argv[1]
count = int(sys.argv[2]) if len(sys.argv) > 2 else 50
times, executors = [], {}
with Client(endpoint) as node:
    for i in range(count + 5):
        started = time.perf_counter()
        task = node.submit("python.tokens", [{"path": "t.py", "text": f"x = {i}\n"}])
        report = node.wait_for(task["task_id"], timeout_s=30)
        elapsed = (time.perf_counter() - started) * 1000
        if report["state"] != "completed":
            sys.exit(f"task failed: {report}")
        if i >= 5:  # the first few warm up connections and gossip meshes
            times.append(elapsed)
            executors[report["executor"]] = executors.get(report["executor"], 0) + 1
times.sort()
print(json.dumps({
    "count": count,
    "median_ms": round(statistics.median(times), 2),
    "p90_ms": round(times[int(len(times) * 0.9) - 1], 2),
    "min_ms": round(times[0], 2),
    "max_ms": round(times[-1], 2),
    "executors": len(executors),
}))
