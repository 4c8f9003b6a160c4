#!/usr/bin/env python3
"""Talk to a local pyagent node from Python with pyzmq.

    python3 scripts/api_example.py [--api tcp://127.0.0.1:7761] [--events tcp://127.0.0.1:7762] [--watch SECONDS]

Prints the node's status and peers as JSON, then (with --watch) the membership events
published during that many seconds. Requests are one JSON frame on a DEALER (or REQ)
socket; replies carry the same "id" and either "result" or "error".
"""
import argparse
import json
import sys
import time

import zmq


def call(sock, method, params=None, request_id=1, timeout_ms=3000):
    sock.send(json.dumps({"id": request_id, "method": method, "params": params or {}}).encode())
    if not sock.poll(timeout_ms):
        raise TimeoutError(f"no reply to {method!r}: is `pyagent node` running?")
    reply = json.loads(sock.recv())
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']['message']} (code {reply['error']['code']})")
    return reply["result"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", default="tcp://127.0.0.1:7761")
    parser.add_argument("--events", default="tcp://127.0.0.1:7762")
    parser.add_argument("--watch", type=float, default=0.0)
    args = parser.parse_args()

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.api)
    try:
        print(json.dumps({"status": call(sock, "status"), "peers": call(sock, "peers", request_id=2)}))
    except (TimeoutError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    if args.watch > 0:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"peer")
        sub.connect(args.events)
        deadline = time.monotonic() + args.watch
        while (left := deadline - time.monotonic()) > 0:
            if sub.poll(int(left * 1000)):
                topic, payload = sub.recv_multipart()
                print(json.dumps({"topic": topic.decode(), "event": json.loads(payload)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
