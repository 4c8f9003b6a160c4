"""The fused decoder graph: the same Llama-style model as `make_tiny_model.build`, in the
same Optimum layout (inputs `input_ids`, `attention_mask`, `position_ids`,
`past_key_values.{i}.key/value`; outputs `logits`, `present.{i}.key/value`) plus an input
`logits_rows` (int64 [1]: logits for the last that many positions only), built from
ONNX Runtime's fused CPU operators, because decode is memory-bound and per-operator bound.
Weights are fp32 (`MatMul`) or int4:

- int4: every projection is a `MatMulNBits` (com.microsoft): weights in blocks of 32 along the
  input dimension, 4 bits each with a float scale and a 4-bit zero point per block
  (round-to-nearest between the block's min and max, zero included); q/k/v are one
  matrix, gate/up another. The graph computes in fp32 (`accuracy_level` 0, `model.onnx`);
  `write_int8_graph` writes the same graph with ONNX Runtime's int8 compute
  (`accuracy_level` 4: activations quantized to int8 per block, integer dot products) as
  `model.int8.onnx` beside it, on the same weights file, and the engine picks one by the
  CPU (`engine/src/infer/compute.rs`). On SmolLM2 both are row-invariant for passes of 2
  rows or more (a row's result does not depend on the other rows of its pass); 1-row passes
  round differently, and int8 amplifies that (logits up to 0.72 apart), so with int8
  compute the engine never runs a 1-row pass;
- the tied output projection (lm_head) is the embedding table (int4: quantized the same
  way, and the embedding lookup reads an fp16 copy of the table; fp32: one table for both,
  the projection a `Gemm` by its transpose);
- `SimplifiedLayerNormalization` / `SkipSimplifiedLayerNormalization` (RMSNorm, with the
  residual add fused), `RotaryEmbedding` (from `position_ids`), `GroupQueryAttention`
  (causal, past + new keys/values in `present.*`, lengths from `attention_mask`; it can
  append in place, so `config.json` says `past_present_share_buffer`).

Used by `convert_gguf.py` and `make_tiny_model.py --quant int4`.
"""

from __future__ import annotations

import numpy as np
import onnx
from make_tiny_model import Graph as BaseGraph
from onnx import TensorProto, helper

BLOCK = 32
MS = "com.microsoft"


def quantize_int4(w_in_out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MatMulNBits operands of a [in, out] matrix: packed weights [out, blocks, 16] (uint8),
    scales [out * blocks] (float32), packed zero points [out * ceil(blocks / 2)] (uint8)."""
    k, n = w_in_out.shape
    if k % BLOCK:
        raise ValueError(f"input size {k} is not a multiple of the block size {BLOCK}")
    blocks = k // BLOCK
    w = w_in_out.T.reshape(n, blocks, BLOCK).astype(np.float32)
    lo = np.minimum(w.min(axis=-1), 0.0)
    hi = np.maximum(w.max(axis=-1), 0.0)
    scale = (hi - lo) / 15.0
    scale = np.where(scale == 0.0, 1.0, scale).astype(np.float32)
    zero = np.clip(np.round(-lo / scale), 0, 15).astype(np.uint8)
    q = np.clip(np.round(w / scale[..., None]) + zero[..., None], 0, 15).astype(np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    if blocks % 2:
        zero = np.concatenate([zero, np.zeros((n, 1), np.uint8)], axis=1)
    zero_packed = (zero[:, 0::2] | (zero[:, 1::2] << 4)).astype(np.uint8).reshape(-1)
    return packed, scale.reshape(-1), zero_packed


class Graph(BaseGraph):
    """`make_tiny_model.Graph` (no random weights: every weight is given) with projections
    in either weight format."""

    def __init__(self):
        super().__init__(np.random.default_rng(0))

    accuracy_level = 0
    int4 = True

    def matmul4(self, x: str, w_in_out: np.ndarray, name: str, out: str | None = None) -> str:
        """`x` times a [in, out] projection: MatMulNBits (int4) or MatMul (fp32)."""
        k, n = w_in_out.shape
        if not self.int4:
            return self.op("MatMul", [x, self.const(w_in_out.astype(np.float32), f"{name}.weight")], [out] if out else 1)
        packed, scales, zeros = quantize_int4(w_in_out)
        b = self.const(packed, f"{name}.qweight", dtype=np.uint8)
        s = self.const(scales, f"{name}.scales")
        z = self.const(zeros, f"{name}.zero_points", dtype=np.uint8)
        outputs = [out] if out else 1
        return self.op("MatMulNBits", [x, b, s, z], outputs, domain=MS, K=k, N=n, bits=4, block_size=BLOCK, accuracy_level=self.accuracy_level)


INT8_GRAPH = "model.int8.onnx"


def write_int8_graph(out_dir: str) -> None:
    """Writes `out_dir/model.int8.onnx`: `model.onnx` with int8 compute in every
    `MatMulNBits`, referring to the same external weights (no copy of them)."""
    import os

    model = onnx.load(os.path.join(out_dir, "model.onnx"), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            for attribute in node.attribute:
                if attribute.name == "accuracy_level":
                    attribute.i = 4
    onnx.save(model, os.path.join(out_dir, INT8_GRAPH))


def build_fused(d, weights: dict, quant: str = "int4") -> onnx.ModelProto:
    """The fused graph of a decoder of dims `d` (`make_tiny_model.Dims`) with `weights`
    (Hugging Face names, projections [in, out], float32); `quant` is int4 or fp32."""
    if quant not in ("int4", "fp32"):
        raise ValueError(f"unknown weight format {quant!r} (int4 or fp32)")
    g = Graph()
    g.int4 = quant == "int4"
    w = lambda name: np.asarray(weights[name], dtype=np.float32)  # noqa: E731
    embed = w("model.embed_tokens.weight")  # [vocab, hidden]
    if g.int4:
        table = g.const(embed, "model.embed_tokens.weight.fp16", dtype=np.float16)
    else:
        table = g.const(embed, "model.embed_tokens.weight")
    inv_freq = 1.0 / (d.rope_theta ** (np.arange(0, d.head_dim, 2, dtype=np.float64) / d.head_dim))
    angles = np.outer(np.arange(d.max_pos, dtype=np.float64), inv_freq)  # [max_pos, head_dim / 2]
    cos, sin = g.const(np.cos(angles).astype(np.float32), "rope.cos"), g.const(np.sin(angles).astype(np.float32), "rope.sin")
    i64 = lambda v: g.const(v, dtype=np.int64)  # noqa: E731

    hidden = g.op("Gather", [table, "input_ids"], axis=0)  # [b, s, H]
    if g.int4:
        hidden = g.op("Cast", [hidden], to=TensorProto.FLOAT)
    # GroupQueryAttention's lengths: keys seen per sequence - 1, and the total length.
    seqlens = g.op("Cast", [g.op("Sub", [g.op("ReduceSum", ["attention_mask", i64([1])], keepdims=0), i64(1)])], to=TensorProto.INT32)
    total = g.op("Cast", [g.op("Gather", [g.op("Shape", ["attention_mask"]), i64(1)], axis=0)], to=TensorProto.INT32)
    q_size, kv_size = d.heads * d.head_dim, d.kv_heads * d.head_dim
    split_qkv = i64([q_size, kv_size, kv_size])
    split_ffn = i64([d.ffn, d.ffn])

    residual = None
    for layer in range(d.layers):
        p = f"model.layers.{layer}"
        attn_norm = g.const(w(f"{p}.input_layernorm.weight"), f"{p}.input_layernorm.weight")
        if residual is None:
            x = g.op("SimplifiedLayerNormalization", [hidden, attn_norm], axis=-1, epsilon=d.rms_eps, stash_type=1)
            residual = hidden
        else:
            x, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [residual, hidden, attn_norm], 4, domain=MS, epsilon=d.rms_eps)
        qkv_w = np.concatenate([w(f"{p}.self_attn.q_proj.weight"), w(f"{p}.self_attn.k_proj.weight"), w(f"{p}.self_attn.v_proj.weight")], axis=1)
        q, k, v = g.op("Split", [g.matmul4(x, qkv_w, f"{p}.self_attn.qkv_proj"), split_qkv], 3, axis=-1)
        q = g.op("RotaryEmbedding", [q, "position_ids", cos, sin], domain=MS, interleaved=0, num_heads=d.heads)
        k = g.op("RotaryEmbedding", [k, "position_ids", cos, sin], domain=MS, interleaved=0, num_heads=d.kv_heads)
        attn, _, _ = g.op(
            "GroupQueryAttention",
            [q, k, v, f"past_key_values.{layer}.key", f"past_key_values.{layer}.value", seqlens, total],
            ["attn_" + str(layer), f"present.{layer}.key", f"present.{layer}.value"],
            domain=MS,
            num_heads=d.heads,
            kv_num_heads=d.kv_heads,
            scale=float(1.0 / np.sqrt(d.head_dim)),
        )
        hidden = g.matmul4(attn, w(f"{p}.self_attn.o_proj.weight"), f"{p}.self_attn.o_proj")

        ffn_norm = g.const(w(f"{p}.post_attention_layernorm.weight"), f"{p}.post_attention_layernorm.weight")
        x, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [residual, hidden, ffn_norm], 4, domain=MS, epsilon=d.rms_eps)
        gate_up = np.concatenate([w(f"{p}.mlp.gate_proj.weight"), w(f"{p}.mlp.up_proj.weight")], axis=1)
        gate, up = g.op("Split", [g.matmul4(x, gate_up, f"{p}.mlp.gate_up_proj"), split_ffn], 2, axis=-1)
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
        hidden = g.matmul4(act, w(f"{p}.mlp.down_proj.weight"), f"{p}.mlp.down_proj")

    final_norm = g.const(w("model.norm.weight"), "model.norm.weight")
    x, _, _, _ = g.op("SkipSimplifiedLayerNormalization", [residual, hidden, final_norm], 4, domain=MS, epsilon=d.rms_eps)
    # Logits of the last `logits_rows` positions only (a prefill needs one row: the rest
    # would cost a [chunk, vocab] product and buffer for nothing).
    x = g.op("Slice", [x, g.op("Neg", ["logits_rows"]), i64([2**62]), i64([1])])
    if g.int4:
        g.matmul4(x, embed.T, "lm_head", "logits")
    else:
        # x [b, rows, H] by the table's transpose, without a transposed copy of the table.
        rows = g.op("Reshape", [x, i64([-1, d.hidden])])
        flat = g.op("Gemm", [rows, table], transB=1)
        shape = g.op("Concat", [g.op("Shape", [x], end=2), i64([d.vocab])], axis=0)
        g.op("Reshape", [flat, shape], ["logits"])

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("logits_rows", TensorProto.INT64, [1]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "logits_rows", d.vocab])]
    for layer in range(d.layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{layer}.{kind}", TensorProto.FLOAT, ["batch", d.kv_heads, "past", d.head_dim]))
            outputs.append(helper.make_tensor_value_info(f"present.{layer}.{kind}", TensorProto.FLOAT, ["batch", d.kv_heads, "total", d.head_dim]))
    graph = helper.make_graph(g.nodes, f"fused-{quant}-decoder", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(MS, 1)], producer_name="pyagent fused_decoder")
    model.ir_version = 8
    return model
