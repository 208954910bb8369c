#!/usr/bin/env bash
# Diagnostic builds of the attention kernels (bench/NOTES_cuda.md v28, v29), here, from a
# configured build directory (BUILD, default build-gpu, with cuda_attention_bench,
# cuda_decode_bench and test_cuda built):
#   bench/diag_build.sh OUT_DIR -DMACRO=VALUE...
# compiles the kernels' files (attention.cu, attention_wide.cu, kernels.cu) and
# cuda_attention_bench.cu with the given macros and links OUT_DIR/{cuda_attention_bench,
# cuda_decode_bench,test_cuda} with them. The macros (each 0 or unset in real builds):
#   -DCASCADE_WIDE_EXPERIMENT=N    the wide kernel, bit 1: the consumer warpgroups do not take
#                                  turns; bit 2: no softmax (P is S: wrong results, timing only).
#                                  Time its kernel with ncu, e.g. CASCADE_BENCH_RUNS=1 ncu
#                                  --graph-profiling node -k regex:attention_wide -c 1 --metrics
#                                  gpu__time_duration.sum OUT_DIR/cuda_attention_bench /tmp/y.json
#                                  --shape 16384/128/256
#   -DCASCADE_TIMELINE=1           the kernels stamp the global timer per CTA (timeline.cuh) and
#                                  cuda_attention_bench prints, per shape, where one replay's
#                                  time went.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="$(mkdir -p "$1" && cd "$1" && pwd)"
shift
[[ $# -ge 1 ]] || { sed -n '2,17p' "$0" >&2; exit 2; }
DEFS="$*"
BUILD="$(cd "${BUILD:-build-gpu}" && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
cp "$BUILD/libcascade_cuda.a" "$TMP/lib.a"
# Each file's own compile command in the build, with the macros and another object.
compile() {  # target object
  local cmd
  local all
  all="$(ninja -C "$BUILD" -t commands "$1")"  # whole, then searched (grep -m1 in the pipe would cut it)
  cmd="$(grep -m1 -F -- "-o $2" <<<"$all")" || { echo "no compile command for $2" >&2; exit 1; }
  cmd="${cmd/-o $2/$DEFS -o $TMP/$(basename "$2")}"
  (cd "$BUILD" && eval "$cmd")
}
for f in attention attention_wide kernels; do
  compile cascade_cuda "CMakeFiles/cascade_cuda.dir/src/backend/cuda/$f.cu.o"
  (cd "$TMP" && ar r lib.a "$f.cu.o")
done
compile cuda_attention_bench CMakeFiles/cuda_attention_bench.dir/bench/cuda_attention_bench.cu.o
# The build's link commands, with that archive (and the bench's object), into OUT_DIR.
for t in cuda_attention_bench cuda_decode_bench test_cuda; do
  link="$(ninja -C "$BUILD" -t commands "$t")"
  link="${link##*$'\n'}"  # the last command: the link
  [[ "$link" == *" libcascade_cuda.a "* ]] || { echo "no link command for $t" >&2; exit 1; }
  link="${link/ libcascade_cuda.a / $TMP/lib.a }"
  link="${link/CMakeFiles\/cuda_attention_bench.dir\/bench\/cuda_attention_bench.cu.o/$TMP/cuda_attention_bench.cu.o}"
  link="${link/-o $t /-o $OUT_DIR/$t }"
  (cd "$BUILD" && eval "$link")
done
echo "built $OUT_DIR/{cuda_attention_bench,cuda_decode_bench,test_cuda} ($DEFS)"
