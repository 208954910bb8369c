#!/usr/bin/env bash
# A/B of two builds on one card in one call (the method of bench/NOTES_cuda.md), run on the GPU
# machine:
#   OLD=DIR NEW=DIR bench/ab_binaries.sh [OUT_DIR]
# Runs OLD's and NEW's cuda_attention_bench (and their cuda_decode_bench where DECODE=1),
# alternating, ROUNDS times (default 2); the JSON goes to OUT_DIR (or $OUT, or ./out) and
# bench/ab_compare.py prints the table of NEW against OLD (ranges over the rounds, ratio of the
# medians). Relative directories are taken from the repository root.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-out}}"
mkdir -p "$OUT_DIR"
export CASCADE_SOURCE_DIR="$PWD"
export LD_LIBRARY_PATH="$PWD/.devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
benches=(cuda_attention_bench)
[[ "${DECODE:-0}" == 1 ]] && benches+=(cuda_decode_bench)
for ((r = 1; r <= ${ROUNDS:-2}; ++r)); do
  for side in old new; do
    dir=$([[ $side == old ]] && echo "$OLD" || echo "$NEW")
    for b in "${benches[@]}"; do
      "$dir/$b" "$OUT_DIR/${b}_${side}_r$r.json" >"$OUT_DIR/${b}_${side}_r$r.log" 2>&1 ||
        echo "FAILED: $dir/$b (see $OUT_DIR/${b}_${side}_r$r.log)"
    done
  done
done
grep -h "^checks" "$OUT_DIR"/cuda_attention_bench_*.log
for b in "${benches[@]}"; do
  python3 bench/ab_compare.py --new "$OUT_DIR/${b}"_new_r*.json --old "$OUT_DIR/${b}"_old_r*.json
done
