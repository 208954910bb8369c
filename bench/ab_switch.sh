#!/usr/bin/env bash
# A/B of one environment switch inside one binary, or of two builds, on one card, in one call
# (the method of bench/NOTES_cuda.md), run on the GPU machine:
#   BIN=DIR bench/ab_switch.sh NAME=VALUE [decode bench arguments, e.g. --batches 16,64 --ctx 512]
#   BIN=DIR OLD=DIR2 bench/ab_switch.sh [decode bench arguments]
# e.g. BIN=.devbin bench/ab_switch.sh CASCADE_ATTENTION_MERGE_KERNEL=1 --batches 16,32,64,96
# Runs DIR's cuda_decode_bench (graphs only, with the given arguments) unless DECODE=0 and
# cuda_attention_bench unless ATTENTION=0, ROUNDS times (default 2), each round DIR's binary as it
# is ("new") and then DIR2's (OLD, default DIR) with NAME=VALUE set, if given ("old"); the JSON
# goes to $OUT (or ./out) and bench/ab_compare.py prints the table of new against old.
set -euo pipefail
cd "$(dirname "$0")/.."
SWITCH=""
if [[ $# -ge 1 && "$1" == *=* ]]; then
  SWITCH="$1"
  shift
elif [[ -z "${OLD:-}" ]]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
BIN="${BIN:-build-gpu}"
OLD_BIN="${OLD:-$BIN}"
OUT_DIR="${OUT:-out}"
ROUNDS="${ROUNDS:-2}"
mkdir -p "$OUT_DIR"
export CASCADE_SOURCE_DIR="$PWD"
export LD_LIBRARY_PATH="$PWD/.devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
new=()
old=()
for r in $(seq 1 "$ROUNDS"); do
  for side in new old; do
    env_cmd=(env)
    dir="$BIN"
    if [[ "$side" == old ]]; then
      dir="$OLD_BIN"
      [[ -n "$SWITCH" ]] && env_cmd=(env "$SWITCH")
    fi
    if [[ "${DECODE:-1}" != 0 ]]; then
      "${env_cmd[@]}" "$dir/cuda_decode_bench" "$OUT_DIR/decode_${side}_$r.json" --no-eager "$@" \
        >"$OUT_DIR/decode_${side}_$r.log" 2>&1 || { tail -5 "$OUT_DIR/decode_${side}_$r.log"; exit 1; }
      [[ "$side" == new ]] && new+=("$OUT_DIR/decode_${side}_$r.json") || old+=("$OUT_DIR/decode_${side}_$r.json")
    fi
    if [[ "${ATTENTION:-1}" != 0 ]]; then
      "${env_cmd[@]}" "$dir/cuda_attention_bench" "$OUT_DIR/attention_${side}_$r.json" \
        >"$OUT_DIR/attention_${side}_$r.log" 2>&1 || { tail -5 "$OUT_DIR/attention_${side}_$r.log"; exit 1; }
      [[ "$side" == new ]] && new+=("$OUT_DIR/attention_${side}_$r.json") || old+=("$OUT_DIR/attention_${side}_$r.json")
    fi
  done
done
echo "new: $BIN as built; old: $OLD_BIN${SWITCH:+ with $SWITCH}; $ROUNDS rounds"
python3 bench/ab_compare.py --new "${new[@]}" --old "${old[@]}"
