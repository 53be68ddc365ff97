#!/usr/bin/env bash
# scripts/gpu_variants.sh - build the CUDA kernel with several experiment switches and time each
# on the same cases (one device call). Usage: gpu_variants.sh "FLAGS1" "FLAGS2" ... ; the case
# filter comes from $CASES (bench_gpu.py --filter syntax).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CASES=${CASES:-"D=64 L=4096 B=4 Hq=32 full,D=128 L=4096 B=4 Hq=16 full,D=128 L=4096 B=4 Hq=16 causal,D=256 L=4096 B=4 Hq=8 full"}
i=0
for flags in "$@"; do
    i=$((i + 1))
    echo "=== variant $i: $flags"
    CUDAFLAGS="$flags" BUILD=build-var$i bash scripts/gpu_check.sh --bench-only --no-bench > /dev/null 2>&1 || { echo build failed; continue; }
    grep -E "spill" build-var$i.build.log | sort | uniq -c | head -3
    python3 bench/bench_gpu.py --build build-var$i --filter "$CASES" --out /tmp/var$i.json 2>&1 | tail -5
done
