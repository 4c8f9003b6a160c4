#!/usr/bin/env python3
"""The soak's load (scripts/soak.sh starts it inside lab machine 1).

Legitimate traffic, all checked: tasks on every node (complexity, tokens, and docstrings
served by an external Python agent on node 2), votes (propose, a ballot from every node,
tally), status and peers. Abuse at the same time, from the list of issue 9: ZMTP frames
announcing 2^62 bytes and 1 GiB, garbage instead of a greeting, malformed and unknown
requests, hostile task paths, quorum 0, 64 long polls on one connection, 20,000 requests
never read, and a burst of stalled p2p handshakes. Every RSS_EVERY seconds the nodes'
resident memory is sampled. Prints a JSON report; exit 1 when a legitimate request failed.
"""

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "agents", "python"))
from pyagent_client import ApiError, Client  # noqa: E402

RSS_EVERY = 5.0


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.failures: list[str] = []

    def ok(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def fail(self, what: str, why: str) -> None:
        with self.lock:
            self.counts[what + ".failed"] = self.counts.get(what + ".failed", 0) + 1
            if len(self.failures) < 50:
                self.failures.append(f"{what}: {why}")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- legitimate traffic

def tasks(apis: list[str], stop: threading.Event, c: Counters) -> None:
    clients = [Client(a, timeout_ms=30_000) for a in apis]
    n = 0
    while not stop.is_set():
        n += 1
        client = clients[n % len(clients)]
        capability = ["python.complexity", "python.tokens", "python.docstrings"][n % 3]
        text = f"def f{n}(x):\n    '''doc'''\n    if x > {n}:\n        return x\n    return -x\n"
        try:
            task = client.submit(capability, [{"path": f"soak/m{n}.py", "text": text}])
            report = client.wait_for(task["task_id"], timeout_s=30)
            if report["state"] == "completed":
                c.ok("task")
            else:
                c.fail("task", f"{capability}: {report.get('state')}: {report.get('reason')}")
        except ApiError as e:
            c.fail("task", f"{capability}: {e}")
        stop.wait(0.05)


def votes(apis: list[str], stop: threading.Event, c: Counters) -> None:
    clients = [Client(a, timeout_ms=10_000) for a in apis]
    n = 0
    while not stop.is_set():
        n += 1
        try:
            proposal = clients[n % len(clients)].call(
                "vote.propose",
                {"title": f"soak {n}", "options": ["a", "b", "c"], "method": "borda", "deadline_secs": 60},
            )["proposal_id"]
            # Every node must have heard of it before it can take a ballot.
            deadline = time.monotonic() + 10
            cast = set()
            while len(cast) < len(clients) and time.monotonic() < deadline:
                for i, client in enumerate(clients):
                    if i in cast:
                        continue
                    try:
                        client.call("vote.ballot", {"proposal_id": proposal, "ranking": ["b", "a", "c"]})
                        cast.add(i)
                    except ApiError as e:
                        if "unknown proposal" not in e.message:
                            raise
                time.sleep(0.1)
            if len(cast) < len(clients):
                c.fail("vote", f"{proposal}: only {len(cast)} nodes took a ballot within 10 s")
                continue
            tally = clients[0].call("vote.tally", {"proposal_id": proposal})
            c.ok("vote") if tally["title"] == f"soak {n}" else c.fail("vote", f"bad tally {tally}")
        except ApiError as e:
            c.fail("vote", str(e))
        stop.wait(0.5)


def queries(apis: list[str], stop: threading.Event, c: Counters) -> None:
    clients = [Client(a, timeout_ms=10_000) for a in apis]
    while not stop.is_set():
        for client in clients:
            try:
                status = client.status()
                peers = client.peers()
                if status["members"] >= len(clients) - 1 and len(peers) >= len(clients) - 1:
                    c.ok("query")
                else:
                    c.fail("query", f"view shrank: {status['members']} members")
            except ApiError as e:
                c.fail("query", str(e))
        stop.wait(0.2)


# ---------------------------------------------------------------- abuse

def greeting() -> bytes:
    return bytes([0xFF] + [0] * 7 + [1, 0x7F, 3, 0]) + b"NULL".ljust(20, b"\0") + b"\0" + b"\0" * 31


def ready(socket_type: bytes) -> bytes:
    body = b"\x05READY" + bytes([11]) + b"Socket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return bytes([0x04, len(body)]) + body


def zmtp(host: str, port: int, socket_type: bytes = b"DEALER") -> socket.socket:
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(greeting())
    read_exact(s, 64)
    s.sendall(ready(socket_type))
    read_frame(s)  # their READY
    return s


def frame(body: bytes) -> bytes:
    if len(body) > 255:
        return b"\x02" + struct.pack(">Q", len(body)) + body
    return bytes([0, len(body)]) + body


def read_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def read_frame(s: socket.socket) -> bytes:
    s.settimeout(5)
    flags = read_exact(s, 1)[0]
    size = struct.unpack(">Q", read_exact(s, 8))[0] if flags & 0x02 else read_exact(s, 1)[0]
    return read_exact(s, size)


def closed(s: socket.socket, seconds: float = 5) -> bool:
    s.settimeout(seconds)
    try:
        while s.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    finally:
        s.close()


def abuse(api: str, p2p: tuple[str, int], stop: threading.Event, c: Counters) -> None:
    host, port = api.removeprefix("tcp://").rsplit(":", 1)
    port = int(port)
    client = Client(api, timeout_ms=10_000)
    round_ = 0
    while not stop.is_set():
        round_ += 1
        try:
            for size in (1 << 62, 1 << 30):
                s = zmtp(host, port)
                s.sendall(b"\x02" + struct.pack(">Q", size))
                c.ok("abuse.huge_frame") if closed(s) else c.fail("abuse.huge_frame", "connection left open")
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(os.urandom(4096))
            closed(s)
            c.ok("abuse.garbage")
            for bad, code in ((b"{not json", -32700), (b'{"id":1,"method":"nope"}', -32601)):
                s = zmtp(host, port)
                s.sendall(frame(bad))
                reply = json.loads(read_frame(s))
                s.close()
                ok = reply["error"]["code"] == code
                c.ok("abuse.malformed") if ok else c.fail("abuse.malformed", str(reply))
            for path in ("../../../etc/passwd", "/etc/passwd", "evil\u202eyp.py"):
                try:
                    client.submit("python.tokens", [{"path": path, "text": "x = 1\n"}])
                    c.fail("abuse.path", f"{path!r} accepted")
                except ApiError as e:
                    c.ok("abuse.path") if e.code == -32602 else c.fail("abuse.path", str(e))
            try:
                client.call("vote.propose", {"title": "q", "options": ["a", "b"], "method": "plurality", "quorum": 0})
                c.fail("abuse.quorum", "quorum 0 accepted")
            except ApiError as e:
                c.ok("abuse.quorum") if e.code == -32602 else c.fail("abuse.quorum", str(e))
            # 64 long polls on one connection, then 20,000 requests never read.
            hog = Client(api, timeout_ms=10_000)
            agent = hog.call("agent.register", {"name": "hog", "capabilities": ["soak.none"]})["agent_id"]
            for i in range(64):
                hog._socket.send(json.dumps({"id": f"p{i}", "method": "agent.next", "params": {"agent_id": agent, "timeout_ms": 5000}}).encode())
            s = zmtp(host, port)
            s.sendall(b"".join(frame(b'{"id":%d,"method":"status"}' % i) for i in range(20_000)))
            time.sleep(3)
            s.close()
            hog.close()
            c.ok("abuse.hog")
            # A burst of stalled p2p handshakes.
            stalled = []
            for _ in range(100):
                try:
                    t = socket.create_connection(p2p, timeout=1)
                    t.sendall(b"\x13/multistream/1.0.0\n")
                    stalled.append(t)
                except OSError:
                    pass
                time.sleep(0.005)
            stop.wait(2)
            for t in stalled:
                t.close()
            c.ok("abuse.handshakes")
        except (OSError, ApiError, ValueError, IndexError) as e:
            c.fail("abuse", f"round {round_}: {e!r}")
        stop.wait(1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", action="append", required=True, help="tcp://IP:PORT of each node's API")
    ap.add_argument("--p2p", required=True, help="IP:PORT of one node's p2p port (handshake abuse)")
    ap.add_argument("--pid", action="append", type=int, required=True, help="each node's pid (RSS)")
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--warmup", type=float, default=15)
    args = ap.parse_args()

    stop = threading.Event()
    c = Counters()
    host, port = args.p2p.rsplit(":", 1)
    workers = [
        threading.Thread(target=tasks, args=(args.api, stop, c)),
        threading.Thread(target=votes, args=(args.api, stop, c)),
        threading.Thread(target=queries, args=(args.api, stop, c)),
        threading.Thread(target=abuse, args=(args.api[0], (host, int(port)), stop, c)),
    ]
    for w in workers:
        w.start()
    started = time.monotonic()
    samples: list[tuple[float, list[int]]] = []
    while time.monotonic() - started < args.seconds:
        time.sleep(min(RSS_EVERY, max(0.1, args.seconds - (time.monotonic() - started))))
        samples.append((time.monotonic() - started, [rss_kib(p) for p in args.pid]))
    stop.set()
    for w in workers:
        w.join(timeout=40)
    after_warmup = [s for s in samples if s[0] >= args.warmup] or samples
    first, last = after_warmup[0][1], samples[-1][1]
    growth = [round(100.0 * (b - a) / a, 1) if a else 0.0 for a, b in zip(first, last)]
    legit = {k: v for k, v in c.counts.items() if not k.startswith("abuse")}
    failed_legit = sum(v for k, v in legit.items() if k.endswith(".failed"))
    report = {
        "seconds": round(time.monotonic() - started, 1),
        "legitimate": legit,
        "failed_legitimate": failed_legit,
        "abuse": {k: v for k, v in c.counts.items() if k.startswith("abuse")},
        "rss_kib_after_warmup": first,
        "rss_kib_end": last,
        "rss_growth_percent": growth,
        "rss_peak_kib": [max(s[1][i] for s in samples) for i in range(len(args.pid))],
        "failures": c.failures,
    }
    print(json.dumps(report, indent=2))
    return 1 if failed_legit else 0


if __name__ == "__main__":
    sys.exit(main())
