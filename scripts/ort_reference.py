"""Reference greedy decoding with Python onnxruntime, for the engine's tests and benchmark.

    python ort_reference.py MODEL_DIR --ids 1,2,3 [--max-tokens N] [--graph FILE] [--one-row]

Prints JSON: {"tokens": [...], "step_logits": [[...], ...]} — the same loop as the
engine (prefill, then one token at a time with past keys/values), on the graph FILE of
MODEL_DIR (default model.onnx; model.int8.onnx is the int8-compute one). Like the engine,
a 1-token pass of an int8-compute graph that appends in place (`past_present_share_buffer`)
runs its token twice and keeps the first row (ONNX Runtime rounds 1-row passes differently:
engine/src/infer/decoder.rs); `--one-row` runs plain 1-row passes instead.
"""

import argparse
import json
import os

import numpy as np
import onnxruntime as ort


class PlainLoop:
    """A model in Python onnxruntime, run the plain Optimum way: each pass's present
    keys/values are fed back as the next pass's past. Also used by bench_engine.py."""

    def __init__(self, model_dir: str, threads: int, graph: str = "model.onnx", one_row: bool = False):
        self.config = json.load(open(os.path.join(model_dir, "config.json")))
        # As the engine: 2-row passes at least for in-place graphs with int8 compute.
        self.min_rows = 2 if self.config.get("past_present_share_buffer") and graph == "model.int8.onnx" and not one_row else 1
        self.layers, self.kv_heads = self.config["num_hidden_layers"], self.config["num_key_value_heads"]
        self.head_dim = self.config.get("head_dim") or self.config["hidden_size"] // self.config["num_attention_heads"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(os.path.join(model_dir, graph), options, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        self.takes_logits_rows = any(i.name == "logits_rows" for i in self.session.get_inputs())
        self.past = {name: np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32) for name in self.past_names()}
        self.past_len = 0

    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{k}" for i in range(self.layers) for k in ("key", "value")]

    def forward(self, ids: list[int]) -> np.ndarray:
        """Runs `ids` after what ran before; returns the last position's logits."""
        return self.forward_all(ids)[-1]

    def forward_all(self, ids: list[int]) -> np.ndarray:
        """Runs `ids` after what ran before; returns the logits of each of them."""
        shown = len(ids)
        ids = ids + [ids[-1]] * (self.min_rows - shown)
        n = len(ids)
        feed = {
            "input_ids": np.array([ids], np.int64),
            "attention_mask": np.ones((1, self.past_len + n), np.int64),
            "position_ids": np.arange(self.past_len, self.past_len + n, dtype=np.int64)[None],
            **self.past,
        }
        if self.takes_logits_rows:
            feed["logits_rows"] = np.array([n], np.int64)  # every row
        out = dict(zip(self.names, self.session.run(None, feed)))
        self.past_len += shown
        self.past = {name: out[name.replace("past_key_values", "present")][:, :, : self.past_len] for name in self.past_names()}
        return out["logits"][0, :shown]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--ids", required=True)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--graph", default="model.onnx")
    parser.add_argument("--one-row", action="store_true")
    args = parser.parse_args()
    loop = PlainLoop(args.model_dir, args.threads, args.graph, args.one_row)
    config, forward = loop.config, loop.forward

    eos = config.get("eos_token_id")
    stop = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    logits = forward([int(t) for t in args.ids.split(",")])
    tokens, steps = [], []
    while len(tokens) < args.max_tokens:
        token = int(np.argmax(logits))
        tokens.append(token)
        steps.append([float(x) for x in logits])
        if token in stop or len(tokens) == args.max_tokens:
            break
        logits = forward([token])
    print(json.dumps({"tokens": tokens, "step_logits": steps}))


if __name__ == "__main__":
    main()
