"""Client side of scripts/bench-serve.sh: times a node's OpenAI-compatible API.

  bench_serve.py ttft URL N [PEER]          p50 time to first streamed text (max_tokens 1)
  bench_serve.py decode URL TOKENS [PEER]   streamed completion: median decode tokens/s after the first token, 3 runs
  bench_serve.py chat URL TOKENS [PEER]     non-streamed chat: median wall seconds of 5 (after a warm-up)
  bench_serve.py concurrent URL CLIENTS TOKENS   share by peer, p50/p99 latency
  bench_serve.py placement URL              mean placement time from /metrics
Prints one JSON object.
"""
import http.client
import json
import statistics
import sys
import threading
import time
from urllib.parse import urlparse

MODEL = "smollm2-int4"
PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
QUESTION = "Explain in a few sentences what a peer-to-peer swarm of machines is good for."


def post(url, path, body, peer=None):
    u = urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    headers = {"Content-Type": "application/json"}
    if peer:
        headers["X-Pyagent-Peer"] = peer
    c.request("POST", path, json.dumps(body), headers)
    return c, c.getresponse()


def stream(url, body, peer=None):
    """(seconds to first text, seconds to the end, usage, ran_on)."""
    body = dict(body, stream=True, stream_options={"include_usage": True})
    t0 = time.perf_counter()
    c, r = post(url, "/v1/completions", body, peer)
    assert r.status == 200, r.read()
    first, usage = None, None
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if event.get("choices") and event["choices"][0].get("text") and first is None:
            first = time.perf_counter() - t0
        if event.get("usage"):
            usage = event["usage"]
    end = time.perf_counter() - t0
    c.close()
    return first if first is not None else end, end, usage, r.getheader("x-pyagent-peer")


def main():
    cmd, url = sys.argv[1], sys.argv[2]
    peer = None
    if cmd == "ttft":
        n = int(sys.argv[3])
        peer = sys.argv[4] if len(sys.argv) > 4 else None
        stream(url, {"model": MODEL, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}, peer)  # warm
        times = [stream(url, {"model": MODEL, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}, peer)[0] for _ in range(n)]
        print(json.dumps({"ttft_p50_ms": statistics.median(times) * 1000, "ttft_min_ms": min(times) * 1000, "runs": n}))
    elif cmd == "decode":
        tokens = int(sys.argv[3])
        peer = sys.argv[4] if len(sys.argv) > 4 else None
        rates = []
        for _ in range(3):
            first, end, usage, ran_on = stream(url, {"model": MODEL, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0}, peer)
            n = usage["completion_tokens"]
            rates.append((n - 1) / (end - first))
        print(json.dumps({"tokens": n, "decode_tokens_per_s": statistics.median(rates), "runs": len(rates), "ran_on": ran_on}))
    elif cmd == "chat":
        tokens = int(sys.argv[3])
        peer = sys.argv[4] if len(sys.argv) > 4 else None
        body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": tokens, "temperature": 0}
        post(url, "/v1/chat/completions", body, peer)[1].read()  # warm
        walls = []
        for _ in range(5):
            t0 = time.perf_counter()
            c, r = post(url, "/v1/chat/completions", body, peer)
            answer = json.loads(r.read())
            walls.append(time.perf_counter() - t0)
        print(json.dumps({"wall_secs": statistics.median(walls), "runs": len(walls), "completion_tokens": answer["usage"]["completion_tokens"], "prompt_tokens": answer["usage"]["prompt_tokens"], "cached_tokens": answer["usage"]["prompt_tokens_details"]["cached_tokens"]}))
    elif cmd == "concurrent":
        clients, tokens = int(sys.argv[3]), int(sys.argv[4])
        results = []
        lock = threading.Lock()

        def one(i):
            t0 = time.perf_counter()
            c, r = post(url, "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0})
            r.read()
            with lock:
                results.append((time.perf_counter() - t0, r.status, r.getheader("x-pyagent-peer")))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        lat = sorted(r[0] for r in results)
        share = {}
        for _, status, p in results:
            share[p if status == 200 else f"status {status}"] = share.get(p if status == 200 else f"status {status}", 0) + 1
        print(json.dumps({"clients": clients, "share": share, "p50_s": lat[len(lat) // 2], "p99_s": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "wall_s": wall}))
    elif cmd == "placement":
        u = urlparse(url)
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        total = count = 0.0
        for line in text.splitlines():
            if line.startswith("pyagent_placement_seconds_sum"):
                total = float(line.split()[-1])
            if line.startswith("pyagent_placement_seconds_count"):
                count = float(line.split()[-1])
        print(json.dumps({"placements": count, "mean_ms": total / count * 1000 if count else None}))
    else:
        sys.exit(__doc__)


main()
