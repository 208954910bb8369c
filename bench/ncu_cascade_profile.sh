#!/usr/bin/env bash
# Where a cascade's time goes, on the GPU machine (bench/NOTES_cuda.md v27):
#   BIN=DIR bench/ncu_cascade_profile.sh [OUT_DIR]
# 1. Each kernel of cuda_attention_bench's graphs, one at a time under ncu (--graph-profiling
#    node; ncu locks the SM clock at base, ~1.4 GHz on the H100, and flushes the caches before each
#    kernel, so these are cold, serialised durations), for the shapes in SHAPES.
# 2. The wide kernel (attention_wide.cu) at WIDE_SHAPE under --set full, its SASS with stall
#    samples and instruction counts, and bench/ncu_sass_regions.py's reading of it with its
#    instructions per consumer warp and 128-key tile by opcode (--per HGMMA:16: 16 wgmmas a
#    warp-tile).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-build-gpu}"
OUT_DIR="${1:-${OUT:-out}}"
mkdir -p "$OUT_DIR"
export CASCADE_SOURCE_DIR="$PWD" CASCADE_BENCH_RUNS=1
export LD_LIBRARY_PATH="$PWD/.devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
SHAPES="${SHAPES:-4096/128/64 16384/128/64 4096/128/256 16384/128/256}"
WIDE_SHAPE="${WIDE_SHAPE:-16384/128/256}"
for s in $SHAPES; do
  f="$OUT_DIR/dur_${s//\//_}.csv"
  ncu --graph-profiling node --metrics gpu__time_duration.sum --csv "$BIN/cuda_attention_bench" "$OUT_DIR/bench.json" \
    --shape "$s" >"$f" 2>&1 || echo "FAILED: durations at $s (see $f)"
done
ncu --graph-profiling node -k regex:attention_wide --set full --import-source no -c 1 -o "$OUT_DIR/wide" -f \
  "$BIN/cuda_attention_bench" "$OUT_DIR/bench.json" --shape "$WIDE_SHAPE" >"$OUT_DIR/wide_ncu.log" 2>&1 ||
  echo "FAILED: the wide kernel's profile (see $OUT_DIR/wide_ncu.log)"
ncu --import "$OUT_DIR/wide.ncu-rep" --page details >"$OUT_DIR/wide_details.txt" 2>&1
ncu --import "$OUT_DIR/wide.ncu-rep" --page source --csv --print-source sass >"$OUT_DIR/wide_sass.csv" 2>&1
python3 - "$OUT_DIR" "$SHAPES" <<'PY'
import csv, os, sys
out, shapes = sys.argv[1], sys.argv[2].split()
print("| P/U/B | kernel (the cascade graph's, in order) | us |")
print("| --- | --- | --- |")
for s in shapes:
    lines = open(os.path.join(out, "dur_%s.csv" % s.replace("/", "_"))).read().splitlines()
    head = [i for i, l in enumerate(lines) if l.startswith('"ID"')]
    if not head:
        print("| %s | (no data) | |" % s)
        continue
    rows = [r for r in csv.DictReader(lines[head[0]:]) if r["Metric Name"] == "gpu__time_duration.sum"]
    # The last graph run: after the last L2 flush, the cascade's kernels.
    flush = [i for i, r in enumerate(rows) if "l2_flush" in r["Kernel Name"]]
    for r in rows[flush[-1] + 1:] if flush else rows:
        name = r["Kernel Name"].split("(")[0].split("::")[-1]
        us = float(r["Metric Value"].replace(",", "")) / (1000.0 if r["Metric Unit"] == "ns" else 1.0)
        print("| %s | %s | %.1f |" % (s, name, us))
PY
python3 bench/ncu_sass_regions.py "$OUT_DIR/wide_sass.csv" --per HGMMA:16
