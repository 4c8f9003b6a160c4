"""Does a row of a forward pass get the same bits whatever else the pass holds? The check
behind the engine's rule that no pass has one row (engine/src/infer/decoder.rs), for each
graph of a model directory (model.onnx: fp32 compute; model.int8.onnx: int8 compute).

    python row_invariance.py MODEL_DIR [--threads N] [--tokens N]

A random prompt runs as one pass (the reference); then chunked in other ways, and with its
last tokens in passes of 1, 2 or 5 rows. For each way it prints the largest logit
difference from the reference and at how many positions the argmax changed. On every CPU
measured so far, all ways with passes of 2 rows or more are identical (0) and 1-row passes
are not.
On another CPU class without the machine at hand, QEMU's user mode runs the kernels ONNX
Runtime picks for that CPU's features (slowly), e.g. AVX2 without AVX-512:

    qemu-x86_64 -cpu EPYC-Rome .venv-models/bin/python scripts/row_invariance.py target/models/tiny-int4
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ort_reference import PlainLoop  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=300)
    args = parser.parse_args()
    cfg = json.load(open(os.path.join(args.model_dir, "config.json")))
    n = args.tokens
    prompt = [int(x) for x in np.random.default_rng(0).integers(0, min(cfg["vocab_size"], 5000), n)]
    ways = {
        f"chunks of 256 + {n - 256}": [prompt[:256], prompt[256:]],
        f"100 + {n - 100}": [prompt[:100], prompt[100:]],
        f"{n - 10} + 2-row passes": [prompt[:-10]] + [prompt[i : i + 2] for i in range(n - 10, n, 2)],
        f"{n - 10} + 5-row passes": [prompt[:-10], prompt[-10:-5], prompt[-5:]],
        f"{n - 10} + 1-row passes": [prompt[:-10]] + [[t] for t in prompt[-10:]],
    }
    for graph in ("model.onnx", "model.int8.onnx"):
        path = os.path.join(args.model_dir, graph)
        if not os.path.exists(path):
            continue

        def run(chunks: list[list[int]]) -> np.ndarray:
            loop = PlainLoop(args.model_dir, args.threads, graph, one_row=True)
            return np.concatenate([loop.forward_all(ids) for ids in chunks])

        whole = run([prompt])
        print(f"{graph}: {n}-token prompt, one pass vs")
        for label, chunks in ways.items():
            ours = run(chunks)
            diff = np.abs(ours - whole).max()
            changed = int(np.sum(ours.argmax(1) != whole.argmax(1)))
            print(f"  {label:28} max logit difference {diff:.3g}, argmax changed at {changed} of {n} positions", flush=True)


if __name__ == "__main__":
    main()
