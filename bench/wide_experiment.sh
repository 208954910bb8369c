#!/usr/bin/env bash
# Diagnostic builds of the wide cascade kernel (bench/NOTES_cuda.md v28), here, from a configured
# build directory (BUILD, default build-gpu, with cuda_attention_bench built):
#   bench/wide_experiment.sh N OUT_DIR
# compiles attention_wide.cu with -DCASCADE_WIDE_EXPERIMENT=N (bit 1: the consumer warpgroups do
# not take turns; bit 2: no softmax, so P is S and the results are wrong: timing only) and links
# OUT_DIR/cuda_attention_bench with it. Time its wide kernel on the GPU machine with ncu, e.g.
#   CASCADE_BENCH_RUNS=1 ncu --graph-profiling node -k regex:attention_wide -c 1 \
#     --metrics gpu__time_duration.sum OUT_DIR/cuda_attention_bench /tmp/y.json --shape 16384/128/256
set -euo pipefail
cd "$(dirname "$0")/.."
N="$1"
OUT_DIR="$(mkdir -p "$2" && cd "$2" && pwd)"
BUILD="$(cd "${BUILD:-build-gpu}" && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# The build's own compile command for the file, with the macro and another object.
obj=CMakeFiles/cascade_cuda.dir/src/backend/cuda/attention_wide.cu.o
cmd="$(ninja -C "$BUILD" -t commands cascade_cuda | grep -m1 -F -- "-o $obj")"
cmd="${cmd/-o $obj/-DCASCADE_WIDE_EXPERIMENT=$N -o $TMP/attention_wide.cu.o}"
[[ "$cmd" == *CASCADE_WIDE_EXPERIMENT* ]] || { echo "could not find attention_wide.cu's compile command" >&2; exit 1; }
(cd "$BUILD" && eval "$cmd")
cp "$BUILD/libcascade_cuda.a" "$TMP/lib.a"
(cd "$TMP" && ar r lib.a attention_wide.cu.o)
# The build's link command for the bench, with that archive and OUT_DIR's binary.
link="$(ninja -C "$BUILD" -t commands cuda_attention_bench | tail -1)"
link="${link/ libcascade_cuda.a / $TMP/lib.a }"
link="${link/-o cuda_attention_bench/-o $OUT_DIR/cuda_attention_bench}"
(cd "$BUILD" && eval "$link")
echo "built $OUT_DIR/cuda_attention_bench (CASCADE_WIDE_EXPERIMENT=$N)"
