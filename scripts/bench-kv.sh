#!/usr/bin/env bash
# KV-block exchange benchmark in the network-namespace lab (needs root; release build).
#   scripts/bench-kv.sh [MODEL ...]      models: smollm2-int4 (default), smollm2
# Three machines, all serving the model, talking over the lab bridge (veth):
#   1. TTFT of a 1,024-token prompt recomputed on machine 2 vs the same-size prompt that
#      machine 1 ran first, fetched by machine 2 (target >= 20x lower); and the local
#      cache hit for reference
#   2. block transfer rate of those fetches (the KV bulk path, blocks checked on arrival)
#      next to one raw TCP stream between the same two machines (target >= 50% of it); one
#      stream of the bulk path alone between the two machines next to raw TCP from the same
#      tool (`pyagent bench-transport --send-from/--receive-from`); and one stream over each
#      transport stack on loopback next to raw TCP in the same process
#   3. a shared-prefix workload: 32 requests over 4 distinct 512-token prefixes, sent in
#      turn to the 3 machines: mean TTFT with KV-aware placement (exchange on) vs pinned
#      round-robin with the exchange off (target >= 2x lower)
# Prints the machine and a JSON summary (also in target/bench/kv.json). BENCH_KV_LOG sets the
# nodes' RUST_LOG (e.g. pyagent_node::kv=debug: where each fetch's time goes); their logs are
# kept in target/bench/kv-logs/. BENCH_KV_DETAIL=1 prints each workload request (where it ran,
# tokens reused, TTFT).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-kv: needs root (network namespaces)" >&2; exit 1; }
MODELS=("${@:-smollm2-int4}")
cargo build --release --locked --bin pyagent >&2
BIN="$PWD/target/release/pyagent"
export LAB_PREFIX="pyakv"
out="$PWD/target/bench"; mkdir -p "$out"
work=$(mktemp -d)
pids=()
ports_busy() { for i in 1 2 3; do ip netns exec "$LAB_PREFIX-$i" ss -Hltnu 2>/dev/null | grep -qE ':(7760|7763) ' && return 0; done; return 1; }
lab_pids() { for i in 1 2 3; do ip netns pids "$LAB_PREFIX-$i" 2>/dev/null || true; done; }
# Every process in the lab's namespaces, and wait until they are gone: `$!` of a
# backgrounded shell function is its subshell, and killing only that left the nodes (and
# their warm caches) serving the next phase.
stop_nodes() {
    lab_pids | xargs -r kill -9 2>/dev/null || true
    for _ in $(seq 1 100); do [ -z "$(lab_pids)" ] && ! ports_busy && break; sleep 0.1; done
    [ -z "$(lab_pids)" ] || { echo "bench-kv: lab processes left running" >&2; exit 1; }
    ! ports_busy || { echo "bench-kv: the nodes' ports are still taken" >&2; exit 1; }
    pids=()
}
cleanup() {
    stop_nodes
    rm -rf "$out/kv-logs"; mkdir -p "$out/kv-logs"; cp "$work"/n*.log "$out/kv-logs/" 2>/dev/null || true
    scripts/lab.sh down >/dev/null 2>&1 || true; rm -rf "$work"
}
trap cleanup EXIT
scripts/machine.sh
scripts/lab.sh down >/dev/null
scripts/lab.sh up 3 >/dev/null
in_ns() { local i=$1; shift; ip netns exec "$LAB_PREFIX-$i" "$@"; }
addr() { scripts/lab.sh addr "$1"; }
KEY=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
echo "$KEY" > "$work/key"; chmod 600 "$work/key"
url() { echo "http://$(addr "$1"):7763"; }
start() { # start I MODEL_DIR [flags...]
    local i=$1 model=$2; shift 2
    rm -rf "$work/d$i"
    [ ! -f "$work/n$i.log" ] || mv "$work/n$i.log" "$work/n$i-earlier.log"
    RUST_LOG="${BENCH_KV_LOG:-warn}" ip netns exec "$LAB_PREFIX-$i" "$BIN" node --data-dir "$work/d$i" --model "$model" --http "$(addr "$i"):7763" \
        --http-allow-non-loopback --http-api-key "$work/key" "$@" >/dev/null 2>"$work/n$i.log" &
    pids[$i]=$!
}
ready() { # ready I: the node answers and sees the other two serving
    for _ in $(seq 1 900); do
        n=$(in_ns "$1" python3 -c "
import json,urllib.request
r=urllib.request.Request('$(url "$1")/v1/models', headers={'Authorization':'Bearer $KEY'})
m=json.load(urllib.request.urlopen(r, timeout=1)); print(sum(len(x['pyagent']['peers']) for x in m['data']))" 2>/dev/null || echo 0)
        [ "$n" -ge 3 ] && return 0
        sleep 0.2
    done
    echo "bench-kv: node $1 did not become ready" >&2; tail "$work/n$1.log" >&2; exit 1
}
peer_of() { in_ns "$1" "$BIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["peer_id"])'; }
nodes() { # nodes MODEL_DIR [flags...]: three nodes; they find each other by mDNS in the lab
    for i in 1 2 3; do start "$i" "$@"; done
    for i in 1 2 3; do ready "$i"; done
}
client() { in_ns 3 python3 scripts/bench_kv.py "$@"; }

echo "raw TCP, machine 1 -> machine 2 (2 GiB)" >&2
in_ns 2 python3 -c "
import socket,time
s=socket.create_server(('$(addr 2)', 7799)); c,_=s.accept(); n=0; t=time.perf_counter()
while True:
    b=c.recv(1<<20)
    if not b: break
    n+=len(b)
print(n/(time.perf_counter()-t)/1e9)" > "$work/tcp" &
sleep 0.5
in_ns 1 python3 -c "
import socket
c=socket.create_connection(('$(addr 2)', 7799)); b=b'x'*(1<<20)
for _ in range(2048): c.sendall(b)
c.close()"
wait $!
tcp=$(cat "$work/tcp")
echo "loopback: one stream over each transport stack, next to raw TCP (1 GiB, 3 runs each)" >&2
loopback=$("$BIN" bench-transport --mib 1024 --runs 3 | python3 -c 'import json,sys; print(json.dumps([json.loads(l) for l in sys.stdin]))')
# between FROM TO STACK: one stream of 1 GiB from lab machine FROM to TO (`bench-transport
# --send-from` / `--receive-from`: the sender prints a ticket line, the receiver the rate).
between() {
    local from=$1 to=$2 stack=$3 ticket sender
    coproc SENDER { in_ns "$from" "$BIN" bench-transport --stack "$stack" --mib 1024 --send-from "$(addr "$from")"; }
    sender=$SENDER_PID # bash unsets it when the sender exits
    read -r ticket <&"${SENDER[0]}"
    in_ns "$to" "$BIN" bench-transport --stack "$stack" --receive-from "$(addr "$from")" --ticket "$ticket"
    wait "$sender"
}
echo "lab hosts: raw TCP and the KV bulk path, machine 1 -> machine 2 (1 GiB, 3 runs each, interleaved)" >&2
hosts=$(for _ in 1 2 3; do between 1 2 raw-tcp; between 1 2 bulk; done | python3 -c 'import json,sys; print(json.dumps([json.loads(l) for l in sys.stdin]))')

results=()
for name in "${MODELS[@]}"; do
    MODEL="$PWD/target/models/$name"
    [ -f "$MODEL/model.onnx" ] || scripts/prepare-model.sh "$name" "$MODEL" >&2
    echo "$name: 1-2. TTFT fetched vs recomputed, transfer rate" >&2
    nodes "$MODEL"
    ttft=$(client ttft "$KEY" "$name" "$(url 1)" "$(url 2)" x x 1024 3)
    echo "$name: 3. shared-prefix workload, KV-aware" >&2
    aware=$(client workload "$KEY" "$name" aware "$(url 1)" "$(url 2)" "$(url 3)")
    stop_nodes
    echo "$name: 3. shared-prefix workload, round-robin, exchange off" >&2
    nodes "$MODEL" --no-kv-fetch
    rr=$(client workload "$KEY" "$name" rr "$(url 1)" "$(url 2)" "$(url 3)" -- "$(peer_of 1)" "$(peer_of 2)" "$(peer_of 3)")
    stop_nodes
    results+=("{\"model\": \"$name\", \"ttft\": $ttft, \"aware\": $aware, \"round_robin\": $rr}")
done

python3 - "$tcp" "$loopback" "$hosts" "${results[@]}" <<'PY' | tee "$out/kv.json"
import json, sys
tcp = float(sys.argv[1])
loopback = {r["stack"]: {"gbytes_per_s": r["best_gbytes_per_s"], "over_raw_tcp": r["over_raw_tcp"]} for r in json.loads(sys.argv[2])}
hosts = {}
for r in json.loads(sys.argv[3]):
    hosts.setdefault(r["stack"], []).append(r["gbytes_per_s"])
raw, bulk = max(hosts["raw tcp"]), max(hosts["kv bulk (tcp+aes-256-gcm)"])
lab = {"raw_tcp_gbytes_per_s": hosts["raw tcp"], "bulk_gbytes_per_s": hosts["kv bulk (tcp+aes-256-gcm)"], "best_bulk_over_best_raw": round(bulk / raw, 3)}
out = {"raw_tcp_gbytes_per_s": round(tcp, 3), "loopback": loopback, "lab_hosts": lab, "models": []}
for r in map(json.loads, sys.argv[4:]):
    t = r["ttft"]
    out["models"].append({
        "model": r["model"],
        **t,
        "fetch_over_raw_tcp": round(t["fetch_gbytes_per_s"] / tcp, 3) if tcp else None,
        "workload_aware_mean_ttft_ms": r["aware"]["mean_ttft_ms"],
        "workload_round_robin_mean_ttft_ms": r["round_robin"]["mean_ttft_ms"],
        "round_robin_over_aware": round(r["round_robin"]["mean_ttft_ms"] / r["aware"]["mean_ttft_ms"], 2),
        "workload_cached_tokens": [r["aware"]["cached_tokens"], r["round_robin"]["cached_tokens"]],
        "workload_prefixes_computed": [r["aware"]["prefixes_computed"], r["round_robin"]["prefixes_computed"]],
        "workload_ran_on": [r["aware"]["ran_on"], r["round_robin"]["ran_on"]],
    })
print(json.dumps(out, indent=2))
PY
