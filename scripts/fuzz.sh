#!/usr/bin/env bash
# Builds the cargo-fuzz targets of tests/fuzz and runs each for SECONDS (default 60),
# starting from the committed seed corpus; prints each target's executions and exits 1
# if any input crashed one (the input is kept under tests/fuzz/artifacts/TARGET/).
#   scripts/fuzz.sh 600          # 10 minutes per target
#   FUZZ_TARGETS="api_request" scripts/fuzz.sh 30
# Uses the nightly toolchain with AddressSanitizer when rustup has one, else the stable
# toolchain without a sanitizer (coverage-guided all the same); FUZZ_SANITIZER=none skips
# the sanitizer (a much shorter build: what scripts/test.sh's short runs use).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
CARGO_FUZZ_VERSION=0.13.2

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo install cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
if [ "${FUZZ_SANITIZER:-address}" != none ] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
    sanitizer=address
else
    # cargo fuzz's coverage flags need nightly features; without a sanitizer the stable
    # compiler accepts them when told to.
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
    sanitizer=none
fi
targets="${FUZZ_TARGETS:-$("${fuzz[@]}" list --fuzz-dir tests/fuzz)}"

echo "fuzz: building (sanitizer: $sanitizer)"
build_started=$SECONDS
build_log="$(mktemp)"
if ! "${fuzz[@]}" build --fuzz-dir tests/fuzz --sanitizer "$sanitizer" >"$build_log" 2>&1; then
    tail -60 "$build_log"
    exit 1
fi
rm -f "$build_log"
echo "fuzz: built in $((SECONDS - build_started)) s"

total=0
failed=()
printf '%-18s %14s %10s\n' target executions exec/s
for target in $targets; do
    corpus="tests/fuzz/corpus/$target"
    mkdir -p "$corpus"
    log="$(mktemp)"
    if "${fuzz[@]}" run --fuzz-dir tests/fuzz --sanitizer "$sanitizer" "$target" "$corpus" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=CRASH
        failed+=("$target")
    fi
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
    runs="${runs:-0}"
    total=$((total + runs))
    printf '%-18s %14s %10s %s\n' "$target" "$runs" "$((runs / (seconds > 0 ? seconds : 1)))" "$status"
    if [ "$status" = CRASH ]; then
        tail -40 "$log"
    fi
    rm -f "$log"
done
echo "fuzz: $total executions in all, ${#failed[@]} target(s) crashed${failed:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
