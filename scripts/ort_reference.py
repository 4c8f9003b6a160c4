"""Reference greedy decoding with Python onnxruntime, for the engine's tests and benchmark.

    python ort_reference.py MODEL_DIR --ids 1,2,3 [--max-tokens N]

Prints JSON: {"tokens": [...], "step_logits": [[...], ...]} — the same loop as the
engine (prefill, then one token at a time with past keys/values).
"""

import argparse
import json
import os

import numpy as np
import onnxruntime as ort


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--ids", required=True)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    config = json.load(open(os.path.join(args.model_dir, "config.json")))
    layers, kv_heads = config["num_hidden_layers"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(os.path.join(args.model_dir, "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    past = {f"past_key_values.{i}.{k}": np.zeros((1, kv_heads, 0, head_dim), np.float32) for i in range(layers) for k in ("key", "value")}
    past_len = 0

    def forward(ids):
        nonlocal past, past_len
        n = len(ids)
        feed = {
            "input_ids": np.array([ids], np.int64),
            "attention_mask": np.ones((1, past_len + n), np.int64),
            "position_ids": np.arange(past_len, past_len + n, dtype=np.int64)[None],
            **past,
        }
        out = dict(zip(names, session.run(None, feed)))
        past = {f"past_key_values.{i}.{k}": out[f"present.{i}.{k}"] for i in range(layers) for k in ("key", "value")}
        past_len += n
        return out["logits"][0, -1]

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
