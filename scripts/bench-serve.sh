#!/usr/bin/env bash
# Serving benchmark in the network-namespace lab (needs root; release build; SmolLM2 int4):
# machines 1 and 2 serve smollm2-int4, machine 3 serves nothing and asks them.
#   1. decode tokens/s of a completion through machine 3 (run on 1), against
#      `pyagent generate` on machine 1 with the same prompt (target >= 0.95x)
#   2. time to first token through machine 3 (pinned to 1) minus on machine 1 itself
#      (target <= 5 ms added)
#   3. placement decision time on machine 3 (target <= 1 ms)
#   4. non-streamed chat over HTTP on machine 1 against `pyagent generate --chat` there,
#      same prompt, medians of 5 warm runs (target <= 5% slower)
#   5. 16 concurrent clients on machine 3: share served by 1 and 2, p50/p99 latency
# Prints the machine and a JSON summary (also in target/bench/serve.json).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-serve: needs root (network namespaces)" >&2; exit 1; }
MODEL="$PWD/target/models/smollm2-int4"
[ -f "$MODEL/model.onnx" ] || scripts/prepare-model.sh smollm2-int4 "$MODEL" >&2
cargo build --release --locked --bin pyagent >&2
BIN="$PWD/target/release/pyagent"
export LAB_PREFIX="pyaserve"
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
in_ns() { local i=$1; shift; ip netns exec "$LAB_PREFIX-$i" "$@"; }
URL=http://127.0.0.1:7763
start() { # start I [--model DIR]
    local i=$1; shift
    RUST_LOG=warn in_ns "$i" "$BIN" node --data-dir "$work/d$i" "$@" >/dev/null 2>"$work/n$i.log" &
    pids[$i]=$!
    for _ in $(seq 1 600); do
        in_ns "$i" python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('$URL/readyz', timeout=1).status != 200)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench-serve: node $i did not become ready" >&2; tail "$work/n$i.log" >&2; exit 1
}
start 1 --model "$MODEL"
start 2 --model "$MODEL"
start 3
peer1=$(in_ns 1 "$BIN" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["peer_id"])')
for _ in $(seq 1 300); do
    n=$(in_ns 3 python3 -c "import json,urllib.request; m=json.load(urllib.request.urlopen('$URL/v1/models')); print(sum(len(x['pyagent']['peers']) for x in m['data']))")
    [ "$n" -ge 2 ] && break
    sleep 0.1
done
client() { local i=$1; shift; in_ns "$i" python3 scripts/bench_serve.py "$@"; }
TOKENS=128
PROMPT=$'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'
QUESTION="Explain in a few sentences what a peer-to-peer swarm of machines is good for."

echo "1. decode through a peer vs pyagent generate" >&2
remote_decode=$(client 3 decode "$URL" "$TOKENS" "$peer1")
generate=$(in_ns 1 "$BIN" generate --model "$MODEL" --max-tokens "$TOKENS" --stats-json --repeat 3 "$PROMPT" 2>&1 >/dev/null \
    | python3 -c 'import json,statistics,sys; runs=[json.loads(l) for l in sys.stdin if l.startswith("{")]; print(json.dumps({"decode_tokens_per_s": statistics.median((r["tokens"]-1)/r["decode_secs"] for r in runs), "runs": len(runs)}))')
echo "2. time to first token, remote vs local" >&2
ttft_local=$(client 1 ttft "$URL" 20 local)
ttft_remote=$(client 3 ttft "$URL" 20 "$peer1")
echo "3. placement" >&2
placement=$(client 3 placement "$URL")
echo "4. HTTP chat vs pyagent generate --chat" >&2
chat_http=$(client 1 chat "$URL" "$TOKENS" local)
# The same: a warm-up, then the median of 5 (each run's prefill + decode, model loaded once).
chat_generate=$(in_ns 1 "$BIN" generate --model "$MODEL" --chat --max-tokens "$TOKENS" --stats-json --repeat 6 "$QUESTION" 2>&1 >/dev/null \
    | python3 -c 'import json,statistics,sys; runs=[json.loads(l) for l in sys.stdin if l.startswith("{")][1:]; m=statistics.median(r["prefill_secs"]+r["decode_secs"] for r in runs); print(json.dumps({"secs": m, "tokens": runs[-1]["tokens"], "runs": len(runs)}))')
echo "5. 16 concurrent clients through machine 3" >&2
concurrent=$(client 3 concurrent "$URL" 16 64)

python3 - "$remote_decode" "$generate" "$ttft_local" "$ttft_remote" "$placement" "$chat_http" "$chat_generate" "$concurrent" <<'PY' | tee "$out/serve.json"
import json, sys
rd, gen, tl, tr, pl, ch, cg, cc = (json.loads(a) for a in sys.argv[1:])
gen_decode = gen["decode_tokens_per_s"]
summary = {
    "decode_remote_tokens_per_s": round(rd["decode_tokens_per_s"], 1),
    "decode_generate_tokens_per_s": round(gen_decode, 1),
    "decode_ratio": round(rd["decode_tokens_per_s"] / gen_decode, 3) if gen_decode else None,
    "ttft_local_p50_ms": round(tl["ttft_p50_ms"], 2),
    "ttft_remote_p50_ms": round(tr["ttft_p50_ms"], 2),
    "ttft_added_ms": round(tr["ttft_p50_ms"] - tl["ttft_p50_ms"], 2),
    "placement_mean_ms": round(pl["mean_ms"], 4) if pl["mean_ms"] is not None else None,
    "chat_http_secs": round(ch["wall_secs"], 3),
    "chat_generate_secs": round(cg["secs"], 3),
    "chat_tokens": [ch["completion_tokens"], cg["tokens"]],
    "chat_http_over_generate": round(ch["wall_secs"] / cg["secs"], 3),
    "concurrent": cc,
}
print(json.dumps(summary, indent=2))
PY
