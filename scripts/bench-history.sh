#!/usr/bin/env bash
# History DHT benchmark in the network-namespace lab (needs root; release build):
#   1. appends/s on one node (alone: every shard is its own; WAL synced, group commit)
#   2. appends/s replicated: 3 nodes, R = 3, W = 2, through one node
#   3. read latency p50/p99 of `history ID` (asks the owners, merges, verifies)
#   4. a node down (kill -9) while 10,000 entries are written, then back: time from its
#      restart until its digests equal the others', the bytes its interface moved in
#      that time (everything: repair, membership, gossip) and the app-level sync bytes,
#      against the encoded bytes of the entries it was missing
#   5. the bytes of one in-sync anti-entropy round (all 1,024 shards, both ways)
# Prints the machine and a JSON summary (also in target/bench/history.json).
# Usage: scripts/bench-history.sh [ENTRIES]   (default 100000 for 1 and 2)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-history: needs root (network namespaces)" >&2; exit 1; }
entries="${1:-100000}"
python3 -c 'import zmq' 2>/dev/null || scripts/install-deps.sh >&2
cargo build --release --locked --bin pyagent >&2
BIN="$PWD/target/release/pyagent"
export LAB_PREFIX="pyahist"
out="$PWD/target/bench"; mkdir -p "$out"
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    scripts/lab.sh down >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
scripts/machine.sh
scripts/lab.sh down >/dev/null
scripts/lab.sh up 3 >/dev/null

start() { # start I: a node in machine I (data in $work/dI)
    RUST_LOG=warn ip netns exec "$LAB_PREFIX-$1" "$BIN" node --data-dir "$work/d$1" >/dev/null 2>"$work/n$1.log" &
    pids[$1]=$!
    for _ in $(seq 1 100); do
        ip netns exec "$LAB_PREFIX-$1" "$BIN" status --timeout-ms 300 >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "bench-history: node $1 did not start" >&2; tail "$work/n$1.log" >&2; exit 1
}
in_ns() { local i=$1; shift; ip netns exec "$LAB_PREFIX-$i" "$@"; }
client() { local i=$1; shift; in_ns "$i" python3 scripts/bench_history.py "$@"; }
shards() { in_ns "$1" "$BIN" shards --json --timeout-ms 5000; }
members() { shards "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["members"])' 2>/dev/null || echo 0; }
wait_members() { # wait_members N I...
    local n=$1; shift
    for _ in $(seq 1 300); do
        local ok=1
        for i in "$@"; do [ "$(members "$i")" -eq "$n" ] || ok=0; done
        [ $ok -eq 1 ] && return 0
        sleep 0.1
    done
    echo "bench-history: the nodes did not see $n members" >&2; exit 1
}
API=tcp://127.0.0.1:7761

echo "1. one node: $entries appends" >&2
start 1
single=$(client 1 append "$API" "$entries" --batch 1000 --clients 4 --tag single)
kill "${pids[1]}"; wait "${pids[1]}" 2>/dev/null || true
rm -rf "$work/d1"

echo "2. three nodes, R = 3, W = 2: $entries appends through node 1" >&2
for i in 1 2 3; do start "$i"; done
wait_members 3 1 2 3
replicated=$(client 1 append "$API" "$entries" --batch 1000 --clients 4 --tag repl --subjects "$work/subjects")

echo "3. read latency" >&2
reads=$(client 2 read "$API" "$work/subjects" --count 1000)

echo "4. node 3 down while 10,000 entries are written" >&2
kill -9 "${pids[3]}"; wait "${pids[3]}" 2>/dev/null || true
down=$(client 1 append "$API" 10000 --batch 1000 --clients 4 --tag down)
rx0=$(in_ns 3 cat /sys/class/net/eth0/statistics/rx_bytes); tx0=$(in_ns 3 cat /sys/class/net/eth0/statistics/tx_bytes)
t_restart=$(date +%s.%N)
start 3
t_ready=$(date +%s.%N)
digests() { shards "$1" | python3 -c 'import json,sys; print(" ".join(s["digest"] for s in json.load(sys.stdin)["shards"]))' 2>/dev/null || true; }
want=$(digests 1)
for _ in $(seq 1 600); do
    [ "$(digests 3)" = "$want" ] && break
    sleep 0.05
done
t_equal=$(date +%s.%N)
[ "$(digests 3)" = "$want" ] || { echo "bench-history: node 3 did not converge in 30 s" >&2; exit 1; }
rx1=$(in_ns 3 cat /sys/class/net/eth0/statistics/rx_bytes); tx1=$(in_ns 3 cat /sys/class/net/eth0/statistics/tx_bytes)
shards 3 > "$work/s3.json"

echo "5. one in-sync round" >&2
sleep 5
shards 1 > "$work/s1.json"

python3 - "$single" "$replicated" "$reads" "$down" "$work/s3.json" "$work/s1.json" "$t_restart" "$t_ready" "$t_equal" "$rx0" "$tx0" "$rx1" "$tx1" "$out/history.json" <<'PY'
import json, sys
single, repl, reads, down = (json.loads(a) for a in sys.argv[1:5])
s3, s1 = (json.load(open(a)) for a in sys.argv[5:7])
t_restart, t_ready, t_equal = (float(a) for a in sys.argv[7:10])
rx0, tx0, rx1, tx1 = (int(a) for a in sys.argv[10:14])
sync3 = s3["sync"]
missing_bytes = sync3["entry_bytes_written"]
wire = (rx1 - rx0) + (tx1 - tx0)
app = sync3["bytes_sent"] + sync3["bytes_received"]
summary = {
    "one_node_appends_per_s": single["appends_per_s"],
    "replicated_appends_per_s": repl["appends_per_s"],
    "replicated_acknowledged": repl["acknowledged"], "replicated_hinted": repl["hinted"],
    "read_p50_ms": reads["p50_ms"], "read_p99_ms": reads["p99_ms"], "reads_missing": reads["missing"],
    "down_entries_written": down["entries"], "down_acknowledged": down["acknowledged"],
    "restart_to_ready_s": round(t_ready - t_restart, 2),
    "ready_to_digests_equal_s": round(t_equal - t_ready, 2),
    "missing_entries": sync3["entries_written"], "missing_entry_bytes": missing_bytes,
    "repair_wire_bytes": wire, "repair_wire_ratio": round(wire / missing_bytes, 2) if missing_bytes else None,
    "repair_app_bytes": app, "repair_app_ratio": round(app / missing_bytes, 2) if missing_bytes else None,
    "in_sync_round_bytes": s1["sync"]["last_in_sync_round_bytes"],
}
json.dump(summary, open(sys.argv[14], "w"), indent=2)
print(json.dumps(summary, indent=2))
print(f"targets: one node >= 50000/s: {summary['one_node_appends_per_s'] >= 50000}; replicated >= 10000/s: {summary['replicated_appends_per_s'] >= 10000}; "
      f"convergence <= 2 s: {summary['ready_to_digests_equal_s'] <= 2}; repair <= 2x (app level): {(summary['repair_app_ratio'] or 0) <= 2}; "
      f"in-sync round <= 32 KB: {summary['in_sync_round_bytes'] <= 32768}")
PY
