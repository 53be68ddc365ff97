#!/usr/bin/env bash
# bench/run_cpu.sh - the CPU benchmark, end to end (PERF.md; results in bench/results/):
#   1. builds bench_cpu (Release, build/),
#   2. makes sure torch==2.13.0 is importable (pip install torch==2.13.0 if `import torch` fails;
#      always that exact pin: an unpinned torch pulls a multi-GB CUDA build),
#   3. runs bench_cpu: cflash vs the OpenBLAS peer -> bench/results/cpu_prefill_cflash_openblas.json,
#   4. runs bench_cpu_torch.py: torch CPU SDPA on the same cases, merged into
#      bench/results/cpu_prefill.json, and prints the final table.
# Arguments go to bench_cpu: --quick, --threads 1,2, --filter SUBSTR, --reps N, --openblas-mode.
# The full grid takes about 15 minutes on the 2-core machine; --quick about 2.
# Other load on the machine skews the numbers: run it on an idle machine.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
PYTHON=${PYTHON:-python3}
TORCH_PIN=2.13.0
C_JSON=bench/results/cpu_prefill_cflash_openblas.json
OUT_JSON=bench/results/cpu_prefill.json

say() { printf '==> %s\n' "$*"; }

reps=()
for a in "$@"; do
    case "$a" in --json|--json=*) echo "run_cpu.sh: --json is fixed here ($C_JSON)" >&2; exit 2 ;; esac
done
# pass --reps on to the torch script too, so both sides use the same count
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    if [ "${args[$i]}" = --reps ] && ((i + 1 < ${#args[@]})); then reps=(--reps "${args[$((i + 1))]}"); fi
done

say "build bench_cpu (Release, $BUILD_DIR)"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DCFLASH_BUILD_BENCH=ON
cmake --build "$BUILD_DIR" -j "$JOBS" --target bench_cpu

if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    say "$PYTHON -m pip install torch==$TORCH_PIN"
    "$PYTHON" -m pip install "torch==$TORCH_PIN"
fi
say "torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"

mkdir -p bench/results
say "bench_cpu $* (cflash vs openblas)"
rc=0
"$BUILD_DIR/bench/bench_cpu" --json "$C_JSON" "$@" || rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then exit "$rc"; fi # 1: a case failed a check; still merge
say "bench_cpu_torch.py (torch CPU SDPA, merge)"
"$PYTHON" bench/bench_cpu_torch.py --c-json "$C_JSON" --out "$OUT_JSON" ${reps[@]+"${reps[@]}"} || rc=$?
if [ "$rc" -ne 0 ]; then say "some case failed a correctness check (see above): its numbers count for nothing"; fi
exit "$rc"
