"""How far a schedule without 1-row passes (a 1-token pass runs its token twice: what the
engine runs with int8 compute, and what speculative verification sees in either mode) is
from the classic loop of 1-row decode passes, on a corpus of code prompts: greedy tokens of
both with Python onnxruntime on the same graph, for each graph of MODEL_DIR.

    python one_row_agreement.py MODEL_DIR [--prompts N] [--tokens N] [--threads N]

Prompts are windows of this repository's Python scripts, tokenized with the model's own
tokenizer by Hugging Face `tokenizers` (not in .venv-models by default:
`.venv-models/bin/pip install tokenizers==0.22.1`). Prints, per graph, how many generations are identical, where
the others first diverge, and the largest logit difference before the first divergence.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ort_reference import PlainLoop  # noqa: E402


def greedy(loop: PlainLoop, prompt: list[int], n: int) -> tuple[list[int], list[np.ndarray]]:
    logits = loop.forward(prompt)
    tokens, steps = [], []
    for _ in range(n):
        steps.append(logits.copy())
        tokens.append(int(np.argmax(logits)))
        logits = loop.forward([tokens[-1]])
    return tokens, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(os.path.join(args.model_dir, "tokenizer.json"))
    here = os.path.dirname(os.path.abspath(__file__))
    text = "".join(open(f, encoding="utf-8").read() for f in sorted(glob.glob(os.path.join(here, "*.py"))))
    ids = tokenizer.encode(text).ids
    step = max(1, (len(ids) - 200) // args.prompts)
    prompts = [ids[i * step : i * step + 64 + (i * 37) % 136] for i in range(args.prompts)]
    for graph in ("model.onnx", "model.int8.onnx"):
        if not os.path.exists(os.path.join(args.model_dir, graph)):
            continue
        same, diverged, worst = 0, [], 0.0
        for prompt in prompts:
            two_rows = PlainLoop(args.model_dir, args.threads, graph)
            two_rows.min_rows = 2
            ours, our_logits = greedy(two_rows, prompt, args.tokens)
            theirs, their_logits = greedy(PlainLoop(args.model_dir, args.threads, graph, one_row=True), prompt, args.tokens)
            first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
            upto = args.tokens if first is None else first + 1
            worst = max(worst, max(float(np.abs(a - b).max()) for a, b in zip(our_logits[:upto], their_logits[:upto])))
            if first is None:
                same += 1
            else:
                diverged.append(first)
        print(
            f"{graph}: {same} of {len(prompts)} generations of {args.tokens} tokens identical to the 1-row loop"
            + (f"; the others diverge at token {sorted(diverged)}" if diverged else "")
            + f"; largest logit difference up to the first divergence {worst:.3g}",
            flush=True,
        )


if __name__ == "__main__":
    main()
