#!/usr/bin/env bash
# Installs what building and testing PyAgent Swarm needs on Debian/Ubuntu; idempotent.
#   - libclang-dev: RocksDB's bindings are generated with bindgen at build time
#   - iproute2: the network-namespace lab (scripts/lab.sh) used by the lab tests
#   - procps (pgrep): scripts/soak.sh
#   - pyzmq (pip): the Python API example and its test
#   - jinja2 (pip): the reference renderer the chat-template test compares with
#   - openai (pip): the official client the HTTP API test drives (tests/openai_client.py)
#   - python3-venv: scripts/prepare-model.sh (ONNX Runtime, the tiny test model)
# Without root it only reports what is missing.
set -euo pipefail

missing=()
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# scripts/soak.sh finds the lab nodes' pids with pgrep.
command -v pgrep >/dev/null 2>&1 || missing+=(procps)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
# scripts/prepare-model.sh makes a virtual environment (ONNX Runtime for the engine tests).
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "install-deps: apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "install-deps: missing ${missing[*]}; run: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

if ! python3 -c 'import zmq' >/dev/null 2>&1; then
    echo "install-deps: pip install pyzmq"
    python3 -m pip install --quiet --disable-pip-version-check pyzmq==27.3.0 \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages pyzmq==27.3.0
fi

if ! python3 -c 'import jinja2' >/dev/null 2>&1; then
    echo "install-deps: pip install jinja2"
    python3 -m pip install --quiet --disable-pip-version-check jinja2==3.1.6 \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages jinja2==3.1.6
fi

if ! python3 -c 'import openai' >/dev/null 2>&1; then
    echo "install-deps: pip install openai"
    python3 -m pip install --quiet --disable-pip-version-check openai==3.57.0 \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages openai==3.57.0
fi
