#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, in-process multi-node tests and, as root,
# the network-namespace lab tests (mDNS stays inside the lab). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# ONNX Runtime 1.31.1 and the tiny test model (engine tests compare against Python onnxruntime).
scripts/prepare-model.sh tiny target/models/tiny
exec cargo test --workspace --locked --no-fail-fast "$@"
