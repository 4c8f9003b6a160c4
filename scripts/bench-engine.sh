#!/usr/bin/env bash
# Inference engine benchmark on one model directory (default: the tiny test model):
#   1. prefill and decode tokens/s of `pyagent generate` vs Python onnxruntime running the
#      same loop (prefill, then one token at a time with past keys/values) on the same
#      model with the same thread count — the ratio shows the engine's own overhead;
#   2. time to first token of a 1,024-token prompt, cold vs with its prefix cached;
#   3. prompt-lookup speculative vs plain greedy decoding on a code-editing prompt (same
#      output checked).
# The llama.cpp comparison and the int4 targets need the SmolLM2 conversion, which is not
# written yet (see the inference issue).
# Usage: scripts/bench-engine.sh [MODEL_DIR] [THREADS]     (results in target/bench/)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-target/models/tiny}
threads=${2:-2}
[ -f "$model/model.onnx" ] || scripts/prepare-model.sh tiny "$model"
scripts/prepare-model.sh runtime
cargo build --release --locked --bin pyagent >&2
BIN="$PWD/target/release/pyagent"
PY="$PWD/.venv-models/bin/python"
out="$PWD/target/bench"; mkdir -p "$out"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

# A 1,024-token prompt (byte-level tokens for the tiny model) and a code-editing prompt.
python3 - "$work" <<'PY'
import sys
work = sys.argv[1]
text = "".join(f"def handler_{i}(request):\n    return respond(request, status={200 + i % 5})\n" for i in range(40))
open(f"{work}/long.txt", "w").write(text[:1024])
code = "def area(w, h):\n    return w * h\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n\n# the same functions, with type hints:\ndef area(w: float, h: float) -> float:\n    return w * h\n\ndef perimeter(w"
open(f"{work}/code.txt", "w").write(code)
PY

"$BIN" generate --model "$model" --threads "$threads" --max-tokens 128 --repeat 2 --stats-json "$(cat "$work/long.txt")" >/dev/null 2>"$work/ours.jsonl"
"$BIN" generate --model "$model" --threads "$threads" --max-tokens 128 --stats-json "$(cat "$work/code.txt")" >"$work/plain.txt" 2>"$work/plain.jsonl"
"$BIN" generate --model "$model" --threads "$threads" --max-tokens 128 --speculative 8 --stats-json "$(cat "$work/code.txt")" >"$work/spec.txt" 2>"$work/spec.jsonl"

"$PY" - "$model" "$threads" "$work" <<'PY' | tee "$out/engine.txt"
import json, sys, time
import numpy as np, onnxruntime as ort

model, threads, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
config = json.load(open(f"{model}/config.json"))
layers, kv, dim = config["num_hidden_layers"], config["num_key_value_heads"], config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
o = ort.SessionOptions(); o.intra_op_num_threads = threads
s = ort.InferenceSession(f"{model}/model.onnx", o, providers=["CPUExecutionProvider"])
names = [x.name for x in s.get_outputs()]
ours = [json.loads(l) for l in open(f"{work}/ours.jsonl") if l.startswith("{")]
cold, warm = ours[0], ours[1]
n_prompt = cold["prompt_tokens"]
ids = list(range(32, 32 + 64)) * (n_prompt // 64 + 1)
ids = ids[:n_prompt]
past = {f"past_key_values.{i}.{k}": np.zeros((1, kv, 0, dim), np.float32) for i in range(layers) for k in ("key", "value")}
def run(tokens, past, plen):
    n = len(tokens)
    feed = {"input_ids": np.array([tokens], np.int64), "attention_mask": np.ones((1, plen + n), np.int64), "position_ids": np.arange(plen, plen + n, dtype=np.int64)[None], **past}
    out = dict(zip(names, s.run(None, feed)))
    return out["logits"][0, -1], {f"past_key_values.{i}.{k}": out[f"present.{i}.{k}"] for i in range(layers) for k in ("key", "value")}
t = time.perf_counter(); logits, p = run(ids, past, 0); py_prefill = time.perf_counter() - t
n_dec = cold["tokens"]; plen = len(ids)
t = time.perf_counter()
for _ in range(n_dec - 1):
    logits, p = run([int(np.argmax(logits))], p, plen); plen += 1
py_decode = time.perf_counter() - t
ours_prefill = n_prompt / cold["prefill_secs"]; ours_decode = cold["tokens"] / cold["decode_secs"]
py_pre = n_prompt / py_prefill; py_dec = (n_dec - 1) / py_decode if n_dec > 1 else 0
print(f"model {model}, {threads} threads, {n_prompt}-token prompt, {n_dec} generated tokens")
print(f"prefill: engine {ours_prefill:,.0f} tokens/s, python onnxruntime {py_pre:,.0f} tokens/s, ratio {ours_prefill / py_pre:.2f}x")
print(f"decode:  engine {ours_decode:,.0f} tokens/s, python onnxruntime {py_dec:,.0f} tokens/s, ratio {ours_decode / py_dec:.2f}x")
print(f"time to first token: cold {cold['prefill_secs'] * 1000:.2f} ms, prefix cached ({warm['cached_tokens']} tokens) {warm['prefill_secs'] * 1000:.2f} ms, {cold['prefill_secs'] / warm['prefill_secs']:.1f}x lower")
plain = [json.loads(l) for l in open(f"{work}/plain.jsonl") if l.startswith("{")][0]
spec = [json.loads(l) for l in open(f"{work}/spec.jsonl") if l.startswith("{")][0]
same = open(f"{work}/plain.txt").read().strip() == open(f"{work}/spec.txt").read().strip()
plain_rate = plain["tokens"] / plain["decode_secs"]; spec_rate = spec["tokens"] / spec["secs"]
print(f"speculative (k=8) vs plain decode: {spec_rate:,.0f} vs {plain_rate:,.0f} tokens/s ({spec_rate / plain_rate:.2f}x), {spec['passes']} passes for {spec['tokens']} tokens, same output: {same}")
print("llama.cpp and int4 comparisons: not run (the SmolLM2 conversion is not written yet)")
PY
