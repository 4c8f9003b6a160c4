#!/usr/bin/env bash
# Analysis benchmark.
#  1. One node on loopback (mDNS off): `pyagent analyze` of a large Python tree (default:
#     this machine's standard library, site-packages left out), complexity only, warm-up
#     then 3 timed runs (whole command, wall clock): files/s and lines/s. The full analysis
#     (complexity + imports + tokens) once. If radon is installed (`radon` on PATH, or
#     RADON=/path/to/radon), `radon cc -j` on the same tree in the same run, the ratio, and
#     a file-by-file comparison of the answers.
#  2. In the network-namespace lab (root only): overhead of one trivial task through the
#     swarm (task.submit -> result) from a node hosting no agent to 2 worker nodes.
# Usage: scripts/bench-analyze.sh [TREE]      (release build; results in target/bench/)
set -euo pipefail
cd "$(dirname "$0")/.."
tree=${1:-$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')}
cargo build --release --locked --bin pyagent >&2
BIN="$PWD/target/release/pyagent"
out="$PWD/target/bench"; mkdir -p "$out"
scripts/machine.sh
work=$(mktemp -d)
node_pid=""
cleanup() {
    [ -n "$node_pid" ] && kill -TERM "$node_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
api=tcp://127.0.0.1:17861
"$BIN" node --no-mdns --listen-ip 127.0.0.1 --p2p-port 0 --api 127.0.0.1:17861 --events 127.0.0.1:17862 \
    --data-dir "$work/node" >"$work/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 50); do "$BIN" status --api "$api" --timeout-ms 200 >/dev/null 2>&1 && break; sleep 0.1; done

echo "tree: $tree" | tee "$out/analyze.txt"
"$BIN" analyze --api "$api" --quiet --exclude site-packages/ --only complexity "$tree" >/dev/null  # warm-up
times=()
for run in 1 2 3; do
    t0=$(now)
    "$BIN" analyze --api "$api" --json --exclude site-packages/ --only complexity "$tree" >"$work/ours.json"
    times+=("$(python3 -c "print($(now) - $t0)")")
done
t0=$(now)
"$BIN" analyze --api "$api" --json --exclude site-packages/ "$tree" >"$work/full.json"
full=$(python3 -c "print($(now) - $t0)")

radon=${RADON:-$(command -v radon || true)}
radon_time=""
if [ -n "$radon" ]; then
    t0=$(now)
    "$radon" cc -j -e "*/site-packages/*" "$tree" >"$work/radon.json"
    radon_time=$(python3 -c "print($(now) - $t0)")
fi

python3 - "$work" "$tree" "$full" "$radon_time" "${times[@]}" <<'PY' | tee -a "$out/analyze.txt"
import json, os, statistics, sys
work, tree, full, radon_time, *times = sys.argv[1:]
ours = json.load(open(f"{work}/ours.json"))
files, lines = ours["files"], ours["lines"]
wall = statistics.median(float(t) for t in times)
print(f"pyagent analyze (complexity, 1 node, 2 cores): {files} files, {lines} lines; "
      f"median {wall:.2f} s of 3 -> {files / wall:,.0f} files/s, {lines / wall:,.0f} lines/s")
full_json = json.load(open(f"{work}/full.json"))
print(f"full analysis (complexity + imports + tokens): {float(full):.2f} s, "
      f"{len(full_json['imports']['cycles'])} import cycles, "
      f"{full_json['tokens']['total']['cl100k_base']:,} cl100k tokens, complete={full_json['complete']}")
if radon_time:
    radon = json.load(open(f"{work}/radon.json"))
    rt = float(radon_time)
    print(f"radon cc -j: {rt:.2f} s -> {lines / rt:,.0f} lines/s; ratio (lines/s): {rt / wall:.1f}x")
    def norm(blocks):
        def n(b):
            d = {k: v for k, v in b.items() if k not in ("closures", "methods")}
            for key in ("closures", "methods"):
                if key in b:
                    d[key] = [n(c) for c in b[key]]
            return d
        return [n(b) for b in blocks]
    same = differ = 0
    notes = []
    for path, blocks in ours["complexity"].items():
        theirs = radon.get(os.path.join(tree, path), [])
        if isinstance(blocks, dict) or isinstance(theirs, dict):
            continue  # files one of them could not parse
        if norm(blocks) == norm(theirs):
            same += 1
        else:
            differ += 1
            text = open(os.path.join(tree, path), encoding="utf-8", errors="replace").read()
            notes.append(f"{path}{' (uses except*)' if 'except*' in text else ''}")
    print(f"same answers as radon on {same} of {same + differ} files; differing: {', '.join(notes) or 'none'}")
else:
    print("radon not installed: no comparison (pip install radon, or RADON=/path/to/radon)")
PY
kill -TERM "$node_pid" 2>/dev/null || true
wait "$node_pid" 2>/dev/null || true
node_pid=""

if [ "$(id -u)" -ne 0 ]; then
    echo "trivial-task overhead: skipped (needs root for the namespace lab)" | tee -a "$out/analyze.txt"
    exit 0
fi
export LAB_PREFIX="pyatask"
scripts/lab.sh down >/dev/null
scripts/lab.sh up 3 >/dev/null
pids=()
for i in 1 2 3; do
    agents=(); [ "$i" -eq 1 ] && agents=(--agents none)
    ip netns exec "$LAB_PREFIX-$i" "$BIN" node --data-dir "$work/lab$i" "${agents[@]}" >"$work/lab$i.log" 2>&1 &
    pids+=($!)
done
for _ in $(seq 100); do
    n=$(ip netns exec "$LAB_PREFIX-1" "$BIN" peers --json --timeout-ms 500 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["peers"]))' 2>/dev/null || echo 0)
    [ "$n" -eq 2 ] && break
    sleep 0.2
done
sleep 2  # let the gossip meshes settle
result=$(ip netns exec "$LAB_PREFIX-1" python3 scripts/bench_task_overhead.py tcp://127.0.0.1:7761 100)
echo "trivial task through the swarm (3 lab nodes, requester hosts no agent): $result" | tee -a "$out/analyze.txt"
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
scripts/lab.sh down >/dev/null
