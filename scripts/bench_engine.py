"""The inference engine benchmark's driver (run by scripts/bench-engine.sh with the
.venv-models Python). Prints a report and writes it as JSON.

    python bench_engine.py --bin PYAGENT --model DIR --threads N --out FILE.json
                           [--llama-python PY --gguf FILE]

1. `pyagent generate` on a 1,024-token prompt, twice in one process: cold prefill and
   decode tokens/s, then the time to first token with the prompt's prefix cached; the
   process's peak RSS against the model's weights on disk. Decode again without lookahead
   (`--lookahead 0`: one token per pass), the rate of the forward passes themselves.
2. Python onnxruntime running the same loop (prefill, then one token at a time with past
   keys/values) on the same model, prompt length and thread count: the ratio (without
   lookahead) is the engine's own overhead (or gain).
3. Plain decoding (one token per pass) vs the engine's default (lookahead) and
   prompt-lookup speculative (k=8) on code prompts, same output checked.
4. With --gguf: llama.cpp (llama-cpp-python) on the original GGUF, same prompt, same
   threads — what a user would run instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from statistics import median

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ort_reference import PlainLoop  # noqa: E402

PROMPT_TOKENS = 1024
DECODE_TOKENS = 128
ROUNDS = 3

LONG = "".join(f"def handler_{i}(request):\n    return respond(request, status={200 + i % 5}, body=load('page_{i}.html'))\n" for i in range(400))
CODE = (
    "def area(w, h):\n    return w * h\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n\n"
    "def diagonal(w, h):\n    return (w * w + h * h) ** 0.5\n\n"
    "# The same functions, with type hints:\ndef area(w: float, h: float) -> float:\n    return w * h\n\ndef perimeter(w"
)
EDIT = (
    "<|im_start|>user\nAdd type hints to this Python code. Reply with the code only.\n\n```python\n"
    "def area(width, height):\n    return width * height\n\n\ndef perimeter(width, height):\n    return 2 * (width + height)\n\n\n"
    "def scale(width, height, factor):\n    return width * factor, height * factor\n```<|im_end|>\n<|im_start|>assistant\n"
)


def stats(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def engine(args, prompt: str, extra: list[str]) -> tuple[str, list[dict], int]:
    """Runs `pyagent generate`; returns its text, its stats lines, and its peak RSS (which
    it reports itself: a forked child's own accounting would start from ours)."""
    cmd = [args.bin, "generate", "--model", args.model, "--threads", str(args.threads), "--stats-json", *extra, prompt]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: pyagent generate failed:\n{proc.stderr}")
    runs = stats(proc.stderr)
    return proc.stdout, runs, max((r.get("peak_rss_bytes") or 0) for r in runs)


def python_onnxruntime(model: str, threads: int, n_prompt: int, n_decode: int, graph: str) -> tuple[float, float, tuple[float, float] | None]:
    """Python onnxruntime on `graph` of `model` (the one the engine ran), its plain 1-row
    loop and (graphs that append in place) its in-place loop: prefill and decode tokens/s."""
    plain = PlainLoop(model, threads, graph, one_row=True)
    config, session = plain.config, plain.session
    ids = [int(x) for x in np.random.default_rng(7).integers(32, min(config["vocab_size"], 30000), n_prompt)]

    started = time.perf_counter()
    logits = plain.forward(ids)
    prefill = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(n_decode - 1):
        logits = plain.forward([int(np.argmax(logits))])
    decode = time.perf_counter() - started
    if not config.get("past_present_share_buffer"):
        return n_prompt / prefill, (n_decode - 1) / decode, None
    # The graph can append in place: the same loop with I/O binding, each layer's past
    # buffer (room for the whole generation) bound as its present too — ONNX Runtime's
    # fastest loop from Python, what the engine does.
    capacity = n_prompt + n_decode
    binding = session.io_binding()
    buffers = []  # held: an OrtValue from numpy borrows the array's memory
    for name in plain.past_names():
        buffer = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, plain.kv_heads, capacity, plain.head_dim), np.float32))
        buffers.append(buffer)
        binding.bind_ortvalue_input(name, buffer)
        binding.bind_ortvalue_output(name.replace("past_key_values", "present"), buffer)

    def run_in_place(tokens, plen):
        n = len(tokens)
        binding.bind_cpu_input("input_ids", np.array([tokens], np.int64))
        binding.bind_cpu_input("attention_mask", np.ones((1, plen + n), np.int64))
        binding.bind_cpu_input("position_ids", np.arange(plen, plen + n, dtype=np.int64)[None])
        if plain.takes_logits_rows:
            binding.bind_cpu_input("logits_rows", np.array([1], np.int64))
        binding.bind_output("logits")  # its shape changes from the prompt to one token
        session.run_with_iobinding(binding)
        return binding.get_outputs()[-1].numpy()[0, -1]

    started = time.perf_counter()
    logits = run_in_place(ids, 0)
    prefill_in_place = time.perf_counter() - started
    plen = len(ids)
    started = time.perf_counter()
    for _ in range(n_decode - 1):
        logits = run_in_place([int(np.argmax(logits))], plen)
        plen += 1
    decode_in_place = time.perf_counter() - started
    return n_prompt / prefill, (n_decode - 1) / decode, (n_prompt / prefill_in_place, (n_decode - 1) / decode_in_place)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--llama-python")
    parser.add_argument("--gguf")
    args = parser.parse_args()
    machine = subprocess.run([os.path.join(os.path.dirname(os.path.abspath(__file__)), "machine.sh")], capture_output=True, text=True).stdout.strip()
    report: dict = {"model": args.model, "threads": args.threads, "machine": machine}
    lines = [machine]

    # 1 and 2, interleaved for ROUNDS rounds (medians): the engine (cold, then cached; peak
    # RSS), the engine without lookahead (one token per decode pass, as every other loop
    # here), then Python onnxruntime's loops on the same prompt length.
    rounds = []
    for _ in range(ROUNDS):
        long_args = ["--max-prompt-tokens", str(PROMPT_TOKENS), "--max-tokens", str(DECODE_TOKENS)]
        _, runs, rss = engine(args, LONG, [*long_args, "--repeat", "2"])
        _, one_per_pass, _ = engine(args, LONG, [*long_args, "--lookahead", "0"])
        cold, warm = runs[0], runs[1]
        n_prompt, n_decode = cold["prompt_tokens"], cold["tokens"]
        compute = cold.get("compute", "fp32")
        graph = "model.int8.onnx" if compute == "int8" else "model.onnx"
        py_prefill, py_decode, in_place = python_onnxruntime(args.model, args.threads, n_prompt, n_decode, graph)
        rounds.append({
            # The first generated token comes with the prefill; decode_secs covers the rest.
            "prefill": n_prompt / cold["prefill_secs"], "decode": (n_decode - 1) / cold["decode_secs"],
            "decode_no_lookahead": (one_per_pass[0]["tokens"] - 1) / one_per_pass[0]["decode_secs"],
            "lookahead_right": cold.get("lookahead_right", 0), "lookahead_guessed": cold.get("lookahead_guessed", 0),
            "cold_ms": cold["prefill_secs"] * 1e3, "cached_ms": warm["prefill_secs"] * 1e3, "cached_tokens": warm["cached_tokens"],
            "rss": rss, "py_prefill": py_prefill, "py_decode": py_decode,
            "ip_prefill": in_place[0] if in_place else None, "ip_decode": in_place[1] if in_place else None,
        })
    m = {k: median([r[k] for r in rounds]) if rounds[0][k] is not None else None for k in rounds[0]}
    _, _, rss_loaded = engine(args, "Hello", ["--max-tokens", "1"])
    weights = sum(os.path.getsize(os.path.join(args.model, f)) for f in os.listdir(args.model) if f.startswith("model.onnx"))
    report.update(rounds=rounds, medians=m, prompt_tokens=n_prompt, decode_tokens=n_decode, weights_bytes=weights, peak_rss_loaded_bytes=rss_loaded)
    ours_prefill, ours_decode, ours_one = m["prefill"], m["decode"], m["decode_no_lookahead"]
    report["compute"] = compute
    lines.append(f"model {args.model} ({compute} compute, chosen by the engine), {args.threads} threads, {n_prompt}-token prompt, {n_decode} generated tokens, median of {ROUNDS} interleaved rounds")
    lines.append(f"prefill: engine {ours_prefill:,.0f} tokens/s, python onnxruntime {m['py_prefill']:,.0f} tokens/s, ratio {ours_prefill / m['py_prefill']:.2f}x")
    lines.append(
        f"decode:  engine {ours_decode:,.1f} tokens/s ({m['lookahead_right']:.0f} of {m['lookahead_guessed']:.0f} lookahead guesses right), "
        f"without lookahead {ours_one:,.1f} tokens/s ({ours_decode / ours_one:.2f}x); python onnxruntime {m['py_decode']:,.1f} tokens/s (random prompt), "
        f"ratio without lookahead {ours_one / m['py_decode']:.2f}x"
    )
    if m["ip_decode"] is not None:
        lines.append(
            f"  python onnxruntime with in-place KV (I/O binding): prefill {m['ip_prefill']:,.0f} tokens/s (engine {ours_prefill / m['ip_prefill']:.2f}x), "
            f"decode {m['ip_decode']:,.1f} tokens/s (engine without lookahead {ours_one / m['ip_decode']:.2f}x)"
        )
    lines.append(
        f"time to first token: cold {m['cold_ms']:.1f} ms, prefix cached ({m['cached_tokens']:.0f} of {n_prompt} tokens) "
        f"{m['cached_ms']:.1f} ms, {m['cold_ms'] / m['cached_ms']:.1f}x lower"
    )
    lines.append(
        f"peak RSS: model loaded (5-token prompt) {rss_loaded / 2**20:,.0f} MiB = {rss_loaded / weights:.2f}x its {weights / 2**20:,.0f} MiB on disk; "
        f"whole {n_prompt}-token run (KV cache, block pool, logits) {m['rss'] / 2**20:,.0f} MiB = {m['rss'] / weights:.2f}x"
    )

    # 3. Speculative vs plain (one token per pass: --lookahead 0): the engine's default
    # (lookahead) and --speculative 8, on a continuation that repeats code and (models with
    # a chat template) an edit request whose answer copies most of its prompt. Rates
    # include the prefill on every side.
    prompts = [("continuation", CODE)]
    if json.load(open(f"{args.model}/config.json")).get("chat_template"):
        prompts.append(("chat edit", EDIT))
    for label, prompt in prompts:
        plain_rates, look_rates, spec_rates, same = [], [], [], True
        for _ in range(ROUNDS):
            plain_text, plain, _ = engine(args, prompt, ["--max-tokens", str(DECODE_TOKENS), "--lookahead", "0"])
            look_text, look, _ = engine(args, prompt, ["--max-tokens", str(DECODE_TOKENS)])
            spec_text, spec, _ = engine(args, prompt, ["--max-tokens", str(DECODE_TOKENS), "--speculative", "8"])
            plain_rates.append(plain[0]["tokens"] / (plain[0]["prefill_secs"] + plain[0]["decode_secs"]))
            look_rates.append(look[0]["tokens"] / (look[0]["prefill_secs"] + look[0]["decode_secs"]))
            spec_rates.append(spec[0]["tokens"] / spec[0]["secs"])
            same = same and plain_text.strip() == spec_text.strip() == look_text.strip()
        plain_rate, look_rate, spec_rate = median(plain_rates), median(look_rates), median(spec_rates)
        report.setdefault("speculative", []).append(
            {"prompt": label, "plain_tps": plain_rate, "lookahead_tps": look_rate, "speculative_tps": spec_rate, "same_output": same}
        )
        lines.append(
            f"vs plain (one token per pass), {label} prompt + {plain[0]['tokens']} tokens: lookahead (default) {look_rate:,.1f} ({look_rate / plain_rate:.2f}x, "
            f"{look[0].get('lookahead_right', 0)} passes saved), speculative (k=8) {spec_rate:,.1f} ({spec_rate / plain_rate:.2f}x, {spec[0]['passes']} passes), "
            f"plain {plain_rate:,.1f} tokens/s; same output: {same}"
        )

    # 4. llama.cpp on the original GGUF.
    if args.gguf and args.llama_python:
        llama_runs = []
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write(LONG)
            f.flush()
            for _ in range(ROUNDS):
                out = subprocess.run(
                    [args.llama_python, os.path.join(os.path.dirname(__file__), "bench_llama.py"), args.gguf, f.name,
                     "--threads", str(args.threads), "--prompt-tokens", str(PROMPT_TOKENS), "--max-tokens", str(DECODE_TOKENS)],
                    check=True, capture_output=True, text=True,
                ).stdout
                llama_runs.append(json.loads(out.strip().splitlines()[-1]))
        l_prefill = median(r["prompt_tokens"] / r["prefill_secs"] for r in llama_runs)
        l_decode = median((r["tokens"] - 1) / r["decode_secs"] for r in llama_runs)
        l_rss = median(r["peak_rss_bytes"] for r in llama_runs)
        report.update(llama_runs=llama_runs, llama_prefill_tps=l_prefill, llama_decode_tps=l_decode, llama_peak_rss_bytes=l_rss)
        lines.append(
            f"llama.cpp ({os.path.basename(args.gguf)}, median of {ROUNDS}): prefill {l_prefill:,.0f} tokens/s (engine {ours_prefill / l_prefill:.2f}x), "
            f"decode {l_decode:,.1f} tokens/s (engine {ours_decode / l_decode:.2f}x; without lookahead {ours_one / l_decode:.2f}x), peak RSS {l_rss / 2**20:,.0f} MiB"
        )
    print("\n".join(lines))
    json.dump(report, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
