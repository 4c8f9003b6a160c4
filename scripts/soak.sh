#!/usr/bin/env bash
# Soak: a 3-node lab (network namespaces; root) under a steady mix of legitimate traffic
# (tasks on every node, an external Python agent, votes, status/peers) and the abuse of
# issue 9, for MINUTES (default 10). Prints a JSON report: legitimate requests done and
# failed, abuse rounds, each node's RSS after warm-up and at the end.
#   scripts/soak.sh 10
#   PYAGENT_BIN=target/release/pyagent scripts/soak.sh 10
# Exit 1 when a legitimate request failed, or (runs of 5 minutes or more) when a node's
# RSS grew by 10% or more after warm-up.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"
export LAB_PREFIX="${LAB_PREFIX:-pyasoak}"
bin="${PYAGENT_BIN:-target/debug/pyagent}"
[ "$(id -u)" -eq 0 ] || { echo "soak: needs root (network namespaces)" >&2; exit 2; }
if [ ! -x "$bin" ]; then
    cargo build --quiet --locked --bin pyagent
fi
python3 -c 'import zmq' 2>/dev/null || scripts/install-deps.sh

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    scripts/lab.sh down >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

scripts/lab.sh up 3 >/dev/null
for i in 1 2 3; do
    addr="$(scripts/lab.sh addr "$i")"
    scripts/lab.sh exec "$i" "$bin" node --data-dir "$work/n$i" --api "$addr:7761" --events "$addr:7762" \
        --api-allow-non-loopback --log-format json >"$work/n$i.log" 2>&1 &
    pids+=($!)
done
# Wait until every node sees the other two.
for _ in $(seq 1 60); do
    ready=0
    for i in 1 2 3; do
        addr="$(scripts/lab.sh addr "$i")"
        n="$(scripts/lab.sh exec "$i" "$bin" status --api "tcp://$addr:7761" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["members"])' 2>/dev/null || echo 0)"
        [ "$n" = 2 ] && ready=$((ready + 1))
    done
    [ "$ready" = 3 ] && break
    sleep 1
done
[ "$ready" = 3 ] || { echo "soak: the lab nodes did not form one swarm" >&2; tail -5 "$work"/n*.log >&2; exit 1; }

# An external agent on node 2 serves python.docstrings.
a2="$(scripts/lab.sh addr 2)"
scripts/lab.sh exec 2 python3 agents/python/docstring_agent.py --api "tcp://$a2:7761" >"$work/agent.log" 2>&1 &
pids+=($!)
sleep 2

# The node processes' pids (the lab's `ip netns exec` runs them as its children).
node_pids=()
for i in 1 2 3; do
    node_pids+=(--pid "$(pgrep -f -- "--data-dir $work/n$i" | head -1)")
done
a1="$(scripts/lab.sh addr 1)"
a3="$(scripts/lab.sh addr 3)"
echo "soak: $minutes minute(s), 3 nodes ($bin), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
set +e
scripts/lab.sh exec 1 python3 scripts/soak_driver.py \
    --api "tcp://$a1:7761" --api "tcp://$a2:7761" --api "tcp://$a3:7761" --p2p "$a3:7760" \
    "${node_pids[@]}" --seconds "$(python3 -c "print($minutes * 60)")" \
    --warmup "$(python3 -c "print(min(60, $minutes * 60 * 0.2))")" | tee "$work/report.json"
status=${PIPESTATUS[0]}
set -e
for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "soak: a node or the agent died" >&2; status=1; }
done
growth="$(python3 -c "import json; print(max(json.load(open('$work/report.json'))['rss_growth_percent']))")"
if python3 -c "import sys; sys.exit(0 if $minutes >= 5 and $growth >= 10 else 1)"; then
    echo "soak: RSS grew by $growth% (limit 10%)" >&2
    status=1
fi
echo "soak: max RSS growth after warm-up $growth%; exit $status" >&2
exit "$status"
