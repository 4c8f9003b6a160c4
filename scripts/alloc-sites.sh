#!/usr/bin/env bash
# Where a node's memory comes from: every allocation a release `pyagent node` makes in its
# first SECONDS (default 5; alone, mDNS off, loopback ports), caught by uprobes on
# mimalloc's entry points (Rust's allocator and, through mimalloc's override, the C and
# C++ libraries' malloc/new) with their call stacks, summed by call site. Prints the total
# and the sites of blocks of 64 KiB or more, largest first (what found the 4 MB events
# queue behind the idle-RSS regression of 2026-12). Sizes allocated, not resident: a block
# that is never written (a zeroed buffer) or freed at once shows up too.
# Usage: scripts/alloc-sites.sh [SECONDS] [NODE FLAGS...]   (root; needs perf: apt-get
#        install linux-perf; results in target/bench/alloc-sites.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "alloc-sites: needs root (uprobes)" >&2; exit 1; }
command -v perf >/dev/null || { echo "alloc-sites: needs perf (apt-get install linux-perf)" >&2; exit 1; }
seconds=${1:-5}
[ $# -gt 0 ] && shift
cargo build --release --locked --bin pyagent >&2
BIN="$PWD/target/release/pyagent"
out="$PWD/target/bench"; mkdir -p "$out"
work=$(mktemp -d)
cleanup() { perf probe -q -d 'probe_pyagent:*' >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
perf probe -q -d 'probe_pyagent:*' >/dev/null 2>&1 || true
# The size argument of each entry point (x86-64: first argument in rdi, second in rsi).
for probe in 'mi_malloc size=%di:u64' 'mi_malloc_aligned size=%di:u64' 'mi_zalloc_aligned size=%di:u64' \
    'mi_new size=%di:u64' 'mi_calloc n=%di:u64 size=%si:u64' 'mi_realloc size=%si:u64'; do
    perf probe -q -x "$BIN" --add "$probe"
done
scripts/machine.sh
port=$((20000 + RANDOM % 20000))
perf record -q -o "$work/perf.data" -e 'probe_pyagent:*' --call-graph dwarf,8192 -- \
    timeout -s INT "$seconds" "$BIN" node --data-dir "$work/data" --no-mdns --listen-ip 127.0.0.1 \
    --p2p-port "$port" --api "127.0.0.1:$((port + 1))" --events "127.0.0.1:$((port + 2))" \
    --http "127.0.0.1:$((port + 3))" "$@" >/dev/null 2>"$work/node.log" || true
perf script --no-inline -i "$work/perf.data" -F event,trace,ip,sym 2>/dev/null > "$work/script.txt"
python3 - "$work/script.txt" "$seconds" <<'PY' | tee "$out/alloc-sites.txt"
import collections, re, sys
text, seconds = open(sys.argv[1]).read(), sys.argv[2]
by_site, count = collections.Counter(), collections.Counter()
total = big = allocations = 0
for sample in text.split("\n\n"):
    lines = [l.strip() for l in sample.strip().splitlines() if l.strip()]
    if not lines or not (size := re.search(r"\bsize=(\d+)", lines[0])):
        continue
    n = re.search(r"\bn=(\d+)", lines[0])
    size = int(size.group(1)) * (int(n.group(1)) if n else 1)
    allocations += 1
    total += size
    if size < 65536:
        continue
    big += size
    # Frames after the allocator's own: "ADDR symbol+off" -> "symbol".
    frames = [re.sub(r"\+0x[0-9a-f]+$", "", l.split(None, 1)[-1]) for l in lines[2:8]]
    site = "\n    <- ".join(f[:110] for f in frames) or "[no stack]"
    by_site[site] += size
    count[site] += 1
print(f"first {seconds} s of an idle node: {allocations} allocations, {total / 2**20:.1f} MiB allocated, {big / 2**20:.1f} MiB in blocks of 64 KiB or more")
for site, size in by_site.most_common(20):
    print(f"{size / 1024:9.0f} KiB in {count[site]} block(s): {site}")
PY
