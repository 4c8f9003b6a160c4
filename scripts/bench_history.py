#!/usr/bin/env python3
"""Client side of scripts/bench-history.sh: drives one node's ZeroMQ API.

  bench_history.py append ENDPOINT COUNT [--batch B] [--clients C] [--tag T]
      appends COUNT inference entries in batches of B from C concurrent clients;
      prints JSON: seconds, appends/s, acknowledged, hinted, subjects file
  bench_history.py read ENDPOINT SUBJECTS_FILE [--count N]
      reads N random subjects (one `history` call each); prints p50/p99 latency (ms)
"""
import argparse
import hashlib
import json
import random
import sys
import threading
import time

import zmq


def call(sock, method, params, rid=[0]):
    rid[0] += 1
    sock.send(json.dumps({"id": rid[0], "method": method, "params": params}).encode())
    reply = json.loads(sock.recv())
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


def connect(ctx, endpoint):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.RCVTIMEO, 60000)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def subject(tag, n):
    return hashlib.blake2b(f"{tag}/{n}".encode(), digest_size=32).hexdigest()


def append(args):
    ctx = zmq.Context()
    batches = [list(range(i, min(i + args.batch, args.count))) for i in range(0, args.count, args.batch)]
    lock = threading.Lock()
    totals = {"acknowledged": 0, "hinted": 0, "errors": 0}

    # Requests are encoded before the clock starts: the load generator shares the cores
    # with the node, and should take as little of them as it can.
    rid = iter(range(1, len(batches) + 1))
    encoded = {
        id(b): json.dumps({"id": next(rid), "method": "history.append",
                           "params": {"entries": [{"subject": subject(args.tag, n), "model": "bench", "detail": f"{args.tag} {n}"} for n in b]}}).encode()
        for b in batches
    }

    def worker(mine):
        sock = connect(ctx, args.endpoint)
        for b in mine:
            try:
                sock.send(encoded[id(b)])
                reply = json.loads(sock.recv())
                if "error" in reply:
                    raise RuntimeError(f"history.append: {reply['error']}")
                r = reply["result"]
            except Exception as e:  # noqa: BLE001 - reported in the totals
                with lock:
                    totals["errors"] += 1
                print(f"append failed: {e}", file=sys.stderr)
                continue
            with lock:
                totals["acknowledged"] += r["acknowledged"]
                totals["hinted"] += r["hinted"]
        sock.close()

    shares = [batches[i :: args.clients] for i in range(args.clients)]
    threads = [threading.Thread(target=worker, args=(s,)) for s in shares]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if args.subjects:
        with open(args.subjects, "w") as f:
            f.write("\n".join(subject(args.tag, n) for n in range(args.count)))
    print(json.dumps({"entries": args.count, "seconds": round(dt, 3), "appends_per_s": round(args.count / dt), **totals}))


def read(args):
    ctx = zmq.Context()
    sock = connect(ctx, args.endpoint)
    subjects = open(args.subjects).read().split()
    random.seed(7)
    lat = []
    missing = 0
    for s in random.sample(subjects, min(args.count, len(subjects))):
        t0 = time.perf_counter()
        r = call(sock, "history", {"id": s})
        lat.append((time.perf_counter() - t0) * 1000)
        missing += len(r["entries"]) == 0
    lat.sort()
    pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)
    print(json.dumps({"reads": len(lat), "p50_ms": pick(0.50), "p99_ms": pick(0.99), "missing": missing}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("append")
    a.add_argument("endpoint")
    a.add_argument("count", type=int)
    a.add_argument("--batch", type=int, default=1000)
    a.add_argument("--clients", type=int, default=4)
    a.add_argument("--tag", default="bench")
    a.add_argument("--subjects")
    r = sub.add_parser("read")
    r.add_argument("endpoint")
    r.add_argument("subjects")
    r.add_argument("--count", type=int, default=1000)
    args = p.parse_args()
    {"append": append, "read": read}[args.cmd](args)


if __name__ == "__main__":
    main()
