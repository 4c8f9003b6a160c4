"""Writes a tiny random decoder-only model in the Hugging Face Optimum ONNX layout, for fast
tests of the inference engine: a Llama-style block stack (RMSNorm, rotary embeddings,
grouped-query attention, SiLU-gated MLP, tied embeddings) with random weights.

    python3 make_tiny_model.py OUT_DIR [--seed N] [--quant fp32|int4]

OUT_DIR gets `model.onnx`, `tokenizer.json` (byte-level BPE over the 256 bytes, no merges,
plus `<|endoftext|>`) and `config.json`. Inputs: `input_ids` [b, s], `attention_mask`
[b, past + s], `position_ids` [b, s] (int64), `past_key_values.{i}.key/value` [b, kv_heads,
past, head_dim] (float32); outputs: `logits` [b, s, vocab], `present.{i}.key/value`.
With `--quant int4` the same kind of model is built from ONNX Runtime's fused int4
operators (`fused_decoder.py`), in the same layout. Needs numpy and onnx.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN = 2, 32, 4, 2, 8, 64
VOCAB = 257  # 256 bytes + <|endoftext|>
ROPE_THETA, RMS_EPS, MAX_POS = 10000.0, 1e-5, 4096


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-character map (byte-level BPE vocabularies are written in it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def tokenizer_json() -> dict:
    chars = bytes_to_unicode()
    vocab = {chars[b]: b for b in range(256)}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": 256, "content": "<|endoftext|>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": vocab, "merges": []},
    }


class Dims:
    """The shape of a Llama-style decoder (the tiny model's by default)."""

    def __init__(self, layers=LAYERS, hidden=HIDDEN, heads=HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM, ffn=FFN, vocab=VOCAB, rope_theta=ROPE_THETA, rms_eps=RMS_EPS, max_pos=MAX_POS):
        self.layers, self.hidden, self.heads, self.kv_heads, self.head_dim = layers, hidden, heads, kv_heads, head_dim
        self.ffn, self.vocab, self.rope_theta, self.rms_eps, self.max_pos = ffn, vocab, rope_theta, rms_eps, max_pos


class Graph:
    def __init__(self, rng: np.random.Generator, weights: dict | None = None):
        self.rng = rng
        self.weights = weights or {}
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, value, name: str | None = None, dtype=np.float32) -> str:
        name = name or self.name("const")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, shape, name: str, scale: float = 0.2) -> str:
        """A weight: given (converted models), or random (the tiny test model)."""
        if name in self.weights:
            value = np.asarray(self.weights[name], dtype=np.float32)
            assert value.shape == tuple(shape), f"{name}: {value.shape} != {tuple(shape)}"
            return self.const(value, name)
        return self.const(self.rng.normal(0.0, scale, size=shape), name)

    def norm(self, size: int, name: str) -> str:
        return self.const(self.weights.get(name, np.ones(size)), name)

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs) -> str | list[str]:
        outs = [self.name(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, outs, **({"domain": domain} if domain else {}), **attrs))
        return outs[0] if len(outs) == 1 else outs


def rms_norm(g: Graph, x: str, weight: str, eps: float = RMS_EPS) -> str:
    var = g.op("ReduceMean", [g.op("Mul", [x, x]), g.const([-1], dtype=np.int64)], keepdims=1)
    inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [var, g.const(eps)])])])
    return g.op("Mul", [g.op("Mul", [x, inv]), weight])


def rotate_half(g: Graph, x: str, head_dim: int = HEAD_DIM) -> str:
    half = head_dim // 2
    x1, x2 = g.op("Split", [x, g.const([half, half], dtype=np.int64)], 2, axis=-1)
    return g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)


def build(seed: int, dims: Dims | None = None, weights: dict | None = None) -> onnx.ModelProto:
    """The decoder graph; `weights` (HF names, MatMul layout [in, out]) replace random ones."""
    d = dims or Dims()
    LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = d.layers, d.hidden, d.heads, d.kv_heads, d.head_dim, d.ffn, d.vocab  # noqa: N806
    g = Graph(np.random.default_rng(seed), weights)
    embed = g.weight((VOCAB, HIDDEN), "model.embed_tokens.weight", 0.5)
    inv_freq = 1.0 / (d.rope_theta ** (np.arange(0, HEAD_DIM, 2, dtype=np.float64) / HEAD_DIM))
    angles = np.outer(np.arange(d.max_pos, dtype=np.float64), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)
    cos_table, sin_table = g.const(np.cos(angles), "rope.cos"), g.const(np.sin(angles), "rope.sin")

    i64 = lambda v: g.const(v, dtype=np.int64)  # noqa: E731
    hidden = g.op("Gather", [embed, "input_ids"], axis=0)  # [b, s, H]
    cos = g.op("Unsqueeze", [g.op("Gather", [cos_table, "position_ids"], axis=0), i64([1])])  # [b, 1, s, d]
    sin = g.op("Unsqueeze", [g.op("Gather", [sin_table, "position_ids"], axis=0), i64([1])])

    # Mask: key j is visible to query i iff attention_mask[j] and j <= past + i.
    s_len = g.op("Gather", [g.op("Shape", ["input_ids"]), i64(1)], axis=0)
    t_len = g.op("Gather", [g.op("Shape", ["attention_mask"]), i64(1)], axis=0)
    past = g.op("Sub", [t_len, s_len])
    q_pos = g.op("Add", [g.op("Range", [i64(0), s_len, i64(1)]), past])
    k_pos = g.op("Range", [i64(0), t_len, i64(1)])
    causal = g.op("LessOrEqual", [g.op("Unsqueeze", [k_pos, i64([0])]), g.op("Unsqueeze", [q_pos, i64([1])])])  # [s, t]
    keep = g.op("Cast", [g.op("Unsqueeze", ["attention_mask", i64([1, 2])])], to=TensorProto.BOOL)  # [b, 1, 1, t]
    visible = g.op("And", [causal, keep])  # [b, 1, s, t]
    neg = g.const(-1e9)
    zero = g.const(0.0)
    bias = g.op("Where", [visible, zero, neg])

    b_dim = g.op("Gather", [g.op("Shape", ["input_ids"]), i64(0)], axis=0)
    b1, s1 = g.op("Unsqueeze", [b_dim, i64([0])]), g.op("Unsqueeze", [s_len, i64([0])])
    for layer in range(LAYERS):
        p = f"model.layers.{layer}"
        x = rms_norm(g, hidden, g.norm(HIDDEN, f"{p}.input_layernorm.weight"), d.rms_eps)
        q = g.op("MatMul", [x, g.weight((HIDDEN, HEADS * HEAD_DIM), f"{p}.self_attn.q_proj.weight")])
        k = g.op("MatMul", [x, g.weight((HIDDEN, KV_HEADS * HEAD_DIM), f"{p}.self_attn.k_proj.weight")])
        v = g.op("MatMul", [x, g.weight((HIDDEN, KV_HEADS * HEAD_DIM), f"{p}.self_attn.v_proj.weight")])

        def heads(t: str, n: int) -> str:
            shape = g.op("Concat", [b1, s1, i64([n, HEAD_DIM])], axis=0)
            return g.op("Transpose", [g.op("Reshape", [t, shape])], perm=[0, 2, 1, 3])  # [b, n, s, d]

        q, k, v = heads(q, HEADS), heads(k, KV_HEADS), heads(v, KV_HEADS)
        q = g.op("Add", [g.op("Mul", [q, cos]), g.op("Mul", [rotate_half(g, q, HEAD_DIM), sin])])
        k = g.op("Add", [g.op("Mul", [k, cos]), g.op("Mul", [rotate_half(g, k, HEAD_DIM), sin])])
        k_all = g.op("Concat", [f"past_key_values.{layer}.key", k], [f"present.{layer}.key"], axis=2)
        v_all = g.op("Concat", [f"past_key_values.{layer}.value", v], [f"present.{layer}.value"], axis=2)

        def repeat_kv(t: str) -> str:  # [b, kv, T, d] -> [b, heads, T, d]
            t_dim = g.op("Unsqueeze", [g.op("Gather", [g.op("Shape", [t]), i64(2)], axis=0), i64([0])])
            expanded = g.op("Expand", [g.op("Unsqueeze", [t, i64([2])]), g.op("Concat", [b1, i64([KV_HEADS, HEADS // KV_HEADS]), t_dim, i64([HEAD_DIM])], axis=0)])
            return g.op("Reshape", [expanded, g.op("Concat", [b1, i64([HEADS]), t_dim, i64([HEAD_DIM])], axis=0)])

        scores = g.op("Div", [g.op("MatMul", [q, g.op("Transpose", [repeat_kv(k_all)], perm=[0, 1, 3, 2])]), g.const(np.sqrt(HEAD_DIM))])
        attn = g.op("MatMul", [g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1), repeat_kv(v_all)])  # [b, h, s, d]
        attn = g.op("Reshape", [g.op("Transpose", [attn], perm=[0, 2, 1, 3]), g.op("Concat", [b1, s1, i64([HEADS * HEAD_DIM])], axis=0)])
        hidden = g.op("Add", [hidden, g.op("MatMul", [attn, g.weight((HEADS * HEAD_DIM, HIDDEN), f"{p}.self_attn.o_proj.weight")])])

        x = rms_norm(g, hidden, g.norm(HIDDEN, f"{p}.post_attention_layernorm.weight"), d.rms_eps)
        gate = g.op("MatMul", [x, g.weight((HIDDEN, FFN), f"{p}.mlp.gate_proj.weight")])
        up = g.op("MatMul", [x, g.weight((HIDDEN, FFN), f"{p}.mlp.up_proj.weight")])
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
        hidden = g.op("Add", [hidden, g.op("MatMul", [act, g.weight((FFN, HIDDEN), f"{p}.mlp.down_proj.weight")])])

    hidden = rms_norm(g, hidden, g.norm(HIDDEN, "model.norm.weight"), d.rms_eps)
    g.op("MatMul", [hidden, g.op("Transpose", [embed], perm=[1, 0])], ["logits"])

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB])]
    for layer in range(LAYERS):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{layer}.{kind}", TensorProto.FLOAT, ["batch", KV_HEADS, "past", HEAD_DIM]))
            outputs.append(helper.make_tensor_value_info(f"present.{layer}.{kind}", TensorProto.FLOAT, ["batch", KV_HEADS, "total", HEAD_DIM]))
    graph = helper.make_graph(g.nodes, "tiny-decoder", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="pyagent make_tiny_model")
    model.ir_version = 8
    if model.ByteSize() < 2_000_000_000:
        onnx.checker.check_model(model)
    return model


def random_weights(seed: int, d: Dims) -> dict:
    """Random weights for every tensor of a decoder of dims `d` (HF names, [in, out])."""
    rng = np.random.default_rng(seed)
    n = lambda *shape, scale=0.2: rng.normal(0.0, scale, size=shape).astype(np.float32)  # noqa: E731
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    weights = {"model.embed_tokens.weight": n(d.vocab, d.hidden, scale=0.5), "model.norm.weight": 1.0 + n(d.hidden, scale=0.05)}
    for layer in range(d.layers):
        p = f"model.layers.{layer}"
        weights[f"{p}.input_layernorm.weight"] = 1.0 + n(d.hidden, scale=0.05)
        weights[f"{p}.post_attention_layernorm.weight"] = 1.0 + n(d.hidden, scale=0.05)
        weights[f"{p}.self_attn.q_proj.weight"] = n(d.hidden, q)
        weights[f"{p}.self_attn.k_proj.weight"] = n(d.hidden, kv)
        weights[f"{p}.self_attn.v_proj.weight"] = n(d.hidden, kv)
        weights[f"{p}.self_attn.o_proj.weight"] = n(q, d.hidden)
        weights[f"{p}.mlp.gate_proj.weight"] = n(d.hidden, d.ffn)
        weights[f"{p}.mlp.up_proj.weight"] = n(d.hidden, d.ffn)
        weights[f"{p}.mlp.down_proj.weight"] = n(d.ffn, d.hidden)
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quant", choices=["fp32", "int4"], default="fp32")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    if args.quant == "int4":
        from fused_decoder import build_fused

        model = build_fused(Dims(), random_weights(args.seed, Dims()), "int4")
    else:
        model = build(args.seed)
    onnx.save(model, os.path.join(args.out_dir, "model.onnx"))
    if args.quant == "int4":
        from fused_decoder import write_int8_graph

        write_int8_graph(args.out_dir)
    with open(os.path.join(args.out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(), f, ensure_ascii=False)
    config = {
        "architecture": "llama",
        "num_hidden_layers": LAYERS,
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": VOCAB,
        "max_position_embeddings": MAX_POS,
        "bos_token_id": None,
        "eos_token_id": 256,
        "dtype": "int4" if args.quant == "int4" else "float32",
        # GroupQueryAttention appends to a past buffer bound as present (no copy per step).
        "past_present_share_buffer": args.quant == "int4",
    }
    with open(os.path.join(args.out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    print(f"wrote a tiny {args.quant} decoder ({LAYERS} layers, {HEADS} heads / {KV_HEADS} KV heads, vocab {VOCAB}) to {args.out_dir}")


if __name__ == "__main__":
    main()
