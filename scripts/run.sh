#!/usr/bin/env bash
# Builds (release) and runs pyagent with the given arguments, e.g. `scripts/run.sh node`.
# Installs build dependencies first.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-deps.sh" >&2
cargo build --release --locked --bin pyagent --manifest-path "$root/Cargo.toml" >&2
exec "$root/target/release/pyagent" "$@"
