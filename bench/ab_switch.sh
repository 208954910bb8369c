#!/usr/bin/env bash
# A/B of one environment switch inside one binary, on one card, in one call (the method of
# bench/NOTES_cuda.md), run on the GPU machine:
#   BIN=DIR bench/ab_switch.sh NAME=VALUE [decode bench arguments, e.g. --batches 16,64 --ctx 512]
# e.g. BIN=.devbin bench/ab_switch.sh CASCADE_ATTENTION_MERGE_KERNEL=1 --batches 16,32,64,96
# Runs DIR's cuda_decode_bench (graphs only, with the given arguments) unless DECODE=0 and
# cuda_attention_bench unless ATTENTION=0, ROUNDS times (default 2), each round the binary as it
# is ("new") and then with NAME=VALUE set ("old"); the JSON goes to $OUT (or ./out) and
# bench/ab_compare.py prints the table of new against old.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 || "$1" != *=* ]]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
SWITCH="$1"
shift
BIN="${BIN:-build-gpu}"
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
    [[ "$side" == old ]] && env_cmd=(env "$SWITCH")
    if [[ "${DECODE:-1}" != 0 ]]; then
      "${env_cmd[@]}" "$BIN/cuda_decode_bench" "$OUT_DIR/decode_${side}_$r.json" --no-eager "$@" \
        >"$OUT_DIR/decode_${side}_$r.log" 2>&1 || { tail -5 "$OUT_DIR/decode_${side}_$r.log"; exit 1; }
      [[ "$side" == new ]] && new+=("$OUT_DIR/decode_${side}_$r.json") || old+=("$OUT_DIR/decode_${side}_$r.json")
    fi
    if [[ "${ATTENTION:-1}" != 0 ]]; then
      "${env_cmd[@]}" "$BIN/cuda_attention_bench" "$OUT_DIR/attention_${side}_$r.json" \
        >"$OUT_DIR/attention_${side}_$r.log" 2>&1 || { tail -5 "$OUT_DIR/attention_${side}_$r.log"; exit 1; }
      [[ "$side" == new ]] && new+=("$OUT_DIR/attention_${side}_$r.json") || old+=("$OUT_DIR/attention_${side}_$r.json")
    fi
  done
done
echo "new: as built; old: $SWITCH; $ROUNDS rounds"
python3 bench/ab_compare.py --new "${new[@]}" --old "${old[@]}"
