#!/usr/bin/env bash
# Prints the machine a benchmark ran on: CPU model, cores, SIMD features, memory and the
# transparent-huge-page mode (the same code ranks differently on AVX2 and AVX-512, and THP
# changes resident memory). Benchmarks call it first.
set -euo pipefail
model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
simd=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'sse4_2|avx|avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_vnni|avx_vnni|amx_tile' | tr '\n' ' ' | xargs)
mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
thp=$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo unknown)
echo "machine: $model, $(nproc) cores, SIMD: ${simd:-none}, $mem RAM, THP: $thp, $(uname -r)"
