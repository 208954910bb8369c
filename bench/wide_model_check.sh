#!/usr/bin/env bash
# The wide level's split model against v24's rule and the four-warp form, in one call on the GPU
# machine (bench/NOTES_cuda.md v26):
#   BIN=DIR bench/wide_model_check.sh [OUT_DIR]
# For each cascade shape (SHAPES="P/U/B ..." replaces the list), DIR's cuda_attention_bench --shape P/U/B under each variant below (the
# four-warp form first and last, to see the noise), then the wide form's GPU tests (TESTS=0: not); prints one
# table of cascade us per shape and variant (the benchmark's JSON stays in OUT_DIR). Relative BIN
# and OUT_DIR are taken from the repository root. Switches set by the caller apply to every variant.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-build-gpu}"
OUT_DIR="${1:-${OUT:-out}}"
mkdir -p "$OUT_DIR"
export CASCADE_SOURCE_DIR="$PWD"
export LD_LIBRARY_PATH="$PWD/.devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
SHAPES="${SHAPES:-16384/128/256 16384/128/64 4096/128/256 4096/128/64 16384/512/256 16384/512/64}"
# name:switches (comma-separated NAME=VALUE; "-" for none); VARIANTS="name:switches ..." replaces
# the list (e.g. a sweep of CASCADE_ATTENTION_WIDE_CTAS caps).
DEFAULT_VARIANTS=(
  "nowide:CASCADE_ATTENTION_NO_WIDE=1"
  "v24:CASCADE_ATTENTION_WIDE_FILL=1,CASCADE_ATTENTION_WIDE_MIN_RATIO=128"
  "model:-"
  "all:CASCADE_ATTENTION_WIDE_MIN_RATIO=0"
  "cap64:CASCADE_ATTENTION_WIDE_MIN_RATIO=0,CASCADE_ATTENTION_WIDE_CTAS=64"
  "cap96:CASCADE_ATTENTION_WIDE_MIN_RATIO=0,CASCADE_ATTENTION_WIDE_CTAS=96"
  "nowide2:CASCADE_ATTENTION_NO_WIDE=1"
)
if [[ -n "${VARIANTS:-}" ]]; then read -ra VARIANTS <<<"$VARIANTS"; else VARIANTS=("${DEFAULT_VARIANTS[@]}"); fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt"
for shape in $SHAPES; do
  for v in "${VARIANTS[@]}"; do
    if [[ "$v" != *:* ]]; then echo "variant '$v' is not name:switches" >&2; exit 2; fi
    name="${v%%:*}"
    sw="${v#*:}"
    env_cmd=(env)
    [[ "$sw" != "-" ]] && IFS=',' read -ra parts <<<"$sw" && env_cmd+=("${parts[@]}")
    "${env_cmd[@]}" "$BIN/cuda_attention_bench" "$OUT_DIR/${shape//\//_}.$name.json" --shape "$shape" \
      >"$OUT_DIR/${shape//\//_}.$name.log" 2>&1 || echo "FAILED: $shape $name (see its log)"
  done
done
python3 - "$OUT_DIR" "$SHAPES" "${VARIANTS[@]%%:*}" <<'PY'
import json, os, sys
out, shapes, names = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
print("| P/U/B | floor us | " + " | ".join(names) + " |")
print("| --- | --- | " + " | ".join("---" for _ in names) + " |")
for s in shapes:
    cells, floor = [], ""
    for n in names:
        p = os.path.join(out, s.replace("/", "_") + "." + n + ".json")
        try:
            d = json.load(open(p))
            r = d["shapes"][0]
            floor = "%.1f" % r["shared_floor_us"]
            ok = "" if d["checks_passed"] else " FAIL"
            cells.append("%.1f (%d)%s" % (r["cascade_us"], r["slices"], ok))
        except Exception:
            cells.append("-")
    print("| %s | %s | %s |" % (s, floor, " | ".join(cells)))
print("cells: cascade us (state slices: the levels' splits summed)")
PY
if [[ "${TESTS:-1}" != 0 && -x "$BIN/test_cuda" ]]; then
  "$BIN/test_cuda" --gtest_filter='*Wide*:CudaPlanPack.*:CudaRunner.*Shared*:CudaAttention.*Cascade*' \
    >"$OUT_DIR/wide_tests.log" 2>&1
  echo "wide tests rc=$? ($(grep -c '^\[       OK' "$OUT_DIR/wide_tests.log") ok, $(grep -c '^\[  FAILED' "$OUT_DIR/wide_tests.log") failed lines)"
else
  echo "wide tests not run (TESTS=${TESTS:-1}, $BIN/test_cuda)"
fi
