#!/usr/bin/env bash
# Discovery benchmark in the network-namespace lab (needs root): for N in 3 and 10 (or
# the sizes given), start N `pyagent node`s at once with mDNS only, and report
#   - start-up: process spawn -> "node started" log line (per node; median and max)
#   - full mesh: first spawn -> the moment every node has all N-1 peers in its view
#     (from each node's own "peer joined" log timestamps; confirmed with `pyagent peers`)
#   - idle RSS per node, 5 s after the mesh formed, split into file-backed pages (code),
#     anonymous memory and transparent huge pages (from /proc/PID/smaps_rollup)
#   - the allocator's own statistics (mimalloc, MIMALLOC_SHOW_STATS=1, printed by node 1
#     as it exits): what it committed and purged, its threads, its peak RSS
# Usage: scripts/bench-discovery.sh [N...]     (release build; results in target/bench/)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-discovery: needs root (network namespaces)" >&2; exit 1; }
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(3 10)
cargo build --release --locked --bin pyagent >&2
BIN="$PWD/target/release/pyagent"
export LAB_PREFIX="pyabench"
out="$PWD/target/bench"; mkdir -p "$out"
scripts/machine.sh

for n in "${sizes[@]}"; do
    scripts/lab.sh down >/dev/null
    scripts/lab.sh up "$n" >/dev/null
    work=$(mktemp -d)
    : > "$work/spawn.txt"
    for i in $(seq 1 "$n"); do
        echo "$i $(date +%s.%N)" >> "$work/spawn.txt"
        MIMALLOC_SHOW_STATS=1 RUST_LOG=info ip netns exec "$LAB_PREFIX-$i" "$BIN" node --data-dir "$work/d$i" --log-format json \
            > /dev/null 2> "$work/n$i.log" &
        echo $! > "$work/n$i.pid"
    done
    # Wait (at most 30 s) until every node's view is complete.
    deadline=$(( $(date +%s) + 30 ))
    while :; do
        full=0
        for i in $(seq 1 "$n"); do
            c=$(ip netns exec "$LAB_PREFIX-$i" "$BIN" peers --json --timeout-ms 1000 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["peers"]))' 2>/dev/null || echo 0)
            [ "$c" -eq $((n - 1)) ] && full=$((full + 1))
        done
        [ "$full" -eq "$n" ] && break
        [ "$(date +%s)" -lt "$deadline" ] || { echo "N=$n: no full mesh within 30 s ($full/$n complete)" >&2; break; }
        sleep 0.2
    done
    sleep 5
    for i in $(seq 1 "$n"); do
        pid=$(cat "$work/n$i.pid")
        # kB: total RSS, anonymous, anonymous in huge pages
        echo "$i $(awk '/^Rss:/ {r=$2} /^Anonymous:/ {a=$2} /^AnonHugePages:/ {h=$2} END {print r, a, h}' /proc/"$pid"/smaps_rollup)" >> "$work/rss.txt"
    done
    python3 - "$work" "$n" <<'PY' | tee "$out/discovery-$n.txt"
import json, statistics, sys, datetime, pathlib
work, n = pathlib.Path(sys.argv[1]), int(sys.argv[2])
def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
spawn = {int(i): float(t) for i, t in (l.split() for l in (work / "spawn.txt").read_text().splitlines())}
t0 = min(spawn.values())
startup, mesh = [], []
for i in range(1, n + 1):
    started, joins = None, set()
    done = None
    for line in (work / f"n{i}.log").read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        msg = e.get("message", "")
        if msg == "node started" and started is None:
            started = ts(e["timestamp"])
        if msg == "peer joined":
            joins.add(e.get("peer"))
            if len(joins) == n - 1 and done is None:
                done = ts(e["timestamp"])
    startup.append((started - spawn[i]) * 1000 if started else float("nan"))
    mesh.append((done - t0) if done else float("nan"))
mem = [[int(x) / 1024 for x in l.split()[1:]] for l in (work / "rss.txt").read_text().splitlines()]
rss = [m[0] for m in mem]
print(f"N={n} nodes (mDNS only, lab namespaces)")
print(f"  start-up (spawn -> node started): median {statistics.median(startup):.0f} ms, max {max(startup):.0f} ms")
print(f"  full mesh (first spawn -> every view complete): {max(mesh):.2f} s (first node complete at {min(mesh):.2f} s)")
print(f"  spawning all {n} processes took {(max(spawn.values()) - t0) * 1000:.0f} ms")
print(f"  idle RSS per node: median {statistics.median(rss):.1f} MB, max {max(rss):.1f} MB")
med = lambda k: statistics.median(m[k] for m in mem)
print(f"    of which (medians): file-backed {statistics.median(m[0] - m[1] for m in mem):.1f} MB, "
      f"anonymous {med(1):.1f} MB, in transparent huge pages {med(2):.1f} MB")
PY
    for i in $(seq 1 "$n"); do kill -TERM "$(cat "$work/n$i.pid")" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # mimalloc's statistics, which node 1 printed to stderr on exit (not JSON log lines).
    echo "  allocator (mimalloc) of node 1 at exit:" | tee -a "$out/discovery-$n.txt"
    grep -E '^ *(committed|purged|theaps|threads|process) *:' "$work/n1.log" | sed 's/^ */    /' | tee -a "$out/discovery-$n.txt" \
        || echo "    (no statistics printed)" | tee -a "$out/discovery-$n.txt"
    rm -rf "$work"
done
scripts/lab.sh down >/dev/null
