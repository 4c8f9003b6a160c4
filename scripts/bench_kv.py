"""Client side of scripts/bench-kv.sh: drives the lab nodes' OpenAI-compatible APIs.

  bench_kv.py ttft KEY MODEL URL1 URL2 PEER1 PEER2 TOKENS RUNS
      a TOKENS-token prompt: recomputed on node 2 (nobody holds it), then run on node 1
      and fetched by node 2 (same run); medians over RUNS prompts
  bench_kv.py workload KEY MODEL MODE URL... [-- PEER...]
      32 requests, 4 distinct 512-token prefixes + a 32-token suffix each, sent in turn to
      the nodes: MODE aware (placement decides) or rr (pinned round-robin); mean TTFT
  bench_kv.py status URL KEY       the node's KV exchange counters (from /metrics)
BENCH_KV_DETAIL=1 prints each workload request (where it ran, tokens reused, TTFT) on stderr.
Prints one JSON object. Prompts are token ids (seeded), so every node agrees on them.
"""
import http.client
import json
import os
import random
import statistics
import sys
import time
from urllib.parse import urlparse


def post(url, key, body, peer=None):
    u = urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    if peer:
        headers["X-Pyagent-Peer"] = peer
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", json.dumps(dict(body, stream=True, stream_options={"include_usage": True})), headers)
    r = c.getresponse()
    assert r.status == 200, r.read()
    first, usage = None, None
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if event.get("choices") and first is None:
            first = time.perf_counter() - t0
        if event.get("usage"):
            usage = event["usage"]
    end = time.perf_counter() - t0
    ran_on = r.getheader("x-pyagent-peer")
    c.close()
    return (first if first is not None else end), usage, ran_on


def prompt(rng, n):
    return [rng.randrange(100, 40000) for _ in range(n)]


def counters(url, key):
    u = urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    c.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"})
    text = c.getresponse().read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("pyagent_kv_exchange{"):
            what = line.split('what="')[1].split('"')[0]
            out[what] = float(line.rsplit(" ", 1)[1])
    return out


def main():
    cmd = sys.argv[1]
    if cmd == "ttft":
        key, model, u1, u2, p1, p2, tokens, runs = sys.argv[2:10]
        tokens, runs = int(tokens), int(runs)
        rng = random.Random(1)
        cold, fetched, cached, rates = [], [], [], []
        body = lambda p: {"model": model, "prompt": p, "max_tokens": 1, "temperature": 0}
        post(u2, key, body(prompt(rng, 64)), "local")  # warm
        for _ in range(runs):
            p = prompt(rng, tokens)
            t, usage, _ = post(u2, key, body(p), "local")
            assert usage["prompt_tokens_details"]["cached_tokens"] == 0, usage
            cold.append(t)
            q = prompt(rng, tokens)
            post(u1, key, body(q), "local")
            time.sleep(3)  # two advert intervals: node 2 sees node 1's blocks
            before = counters(u2, key)
            t, usage, _ = post(u2, key, body(q), "local")
            after = counters(u2, key)
            assert usage["prompt_tokens_details"]["cached_tokens"] >= tokens - 16, usage
            fetched.append(t)
            moved = after["bytes_fetched"] - before["bytes_fetched"]
            rates.append(after["fetch_bytes_per_second"])
            t, usage, _ = post(u2, key, body(q), "local")
            cached.append(t)
        med = statistics.median
        print(json.dumps({
            "prompt_tokens": tokens, "runs": runs,
            "ttft_recomputed_ms": round(med(cold) * 1e3, 1),
            "ttft_fetched_ms": round(med(fetched) * 1e3, 1),
            "ttft_local_cache_ms": round(med(cached) * 1e3, 1),
            "recomputed_over_fetched": round(med(cold) / med(fetched), 1),
            "bytes_per_fetch": moved,
            "fetch_gbytes_per_s": round(rates[-1] / 1e9, 3),
        }))
    elif cmd == "workload":
        key, model, mode = sys.argv[2:5]
        rest = sys.argv[5:]
        urls = rest[: rest.index("--")] if "--" in rest else rest
        peers = rest[rest.index("--") + 1:] if "--" in rest else []
        rng = random.Random(7)
        prefixes = [prompt(rng, 512) for _ in range(4)]
        requests = [prefixes[i % 4] + prompt(rng, 32) for i in range(32)]
        rng.shuffle(requests)
        times, ran, cached, computed = [], {}, 0, 0
        for i, p in enumerate(requests):
            url = urls[i % len(urls)]
            peer = peers[i % len(peers)] if mode == "rr" else None
            t, usage, on = post(url, key, {"model": model, "prompt": p, "max_tokens": 1, "temperature": 0}, peer)
            times.append(t)
            ran[on] = ran.get(on, 0) + 1
            hit = usage["prompt_tokens_details"]["cached_tokens"]
            cached += hit
            computed += hit < 512  # its prefix computed, not found
            if os.environ.get("BENCH_KV_DETAIL"):
                print(json.dumps({"request": i, "sent_to": url, "ran_on": on, "cached_tokens": hit, "ttft_ms": round(t * 1e3, 1)}), file=sys.stderr)
        print(json.dumps({"mode": mode, "requests": len(times), "mean_ttft_ms": round(statistics.mean(times) * 1e3, 1),
                          "p50_ttft_ms": round(statistics.median(times) * 1e3, 1), "cached_tokens": cached, "prefixes_computed": computed, "ran_on": sorted(ran.values(), reverse=True)}))
    elif cmd == "status":
        print(json.dumps(counters(sys.argv[2], sys.argv[3])))


if __name__ == "__main__":
    main()
