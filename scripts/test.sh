#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, in-process multi-node tests and, as root,
# the network-namespace lab tests (mDNS stays inside the lab). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec cargo test --workspace --locked --no-fail-fast "$@"
