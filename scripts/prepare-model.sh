#!/usr/bin/env bash
# Prepares what the inference engine needs, in a project-local Python environment
# (.venv-models), which is also where the node finds ONNX Runtime by default
# (.venv-models/lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1).
#   scripts/prepare-model.sh runtime            ONNX Runtime 1.31.1 only
#   scripts/prepare-model.sh tiny OUT_DIR       + a tiny random decoder (tests)
#   scripts/prepare-model.sh smollm2 OUT_DIR    not yet: the GGUF converter is still to come
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; }
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
    smollm2)
        echo "prepare-model: smollm2 is not available yet (scripts/convert_gguf.py is still to be written)" >&2
        exit 2
        ;;
    *) usage; exit 2 ;;
esac
