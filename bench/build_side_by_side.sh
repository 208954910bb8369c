#!/usr/bin/env bash
# Builds what bench/run_side_by_side.sh needs, on a machine with nvcc (no GPU needed):
#   BUILD/cascade              the CLI with the CUDA backend (sm_90a)
#   BUILD/libcascade_attn.so   the C ABI over the cascade attention launchers (bench/cascade_attn_capi.cpp)
# usage: bench/build_side_by_side.sh [BUILD_DIR]   (default build-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${1:-build-bench}"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
JOBS="${JOBS:-2}"
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCASCADE_CUDA_ARCHS=90a-real -DCASCADE_BUILD_TESTS=OFF >/dev/null
cmake --build "$BUILD" -j"$JOBS" --target cascade_cli cascade_cuda
# The shim links only the attention objects it uses out of the static CUDA library, plus static cudart.
g++ -O2 -std=c++20 -shared -fPIC -Wall -Wextra -Wno-unused-parameter \
  -I src -I "$CUDA_HOME/include" bench/cascade_attn_capi.cpp \
  "$BUILD/libcascade_cuda.a" -L "$CUDA_HOME/lib64" -lcudart_static -ldl -lrt -lpthread \
  -Wl,--no-undefined -o "$BUILD/libcascade_attn.so"
echo "built $BUILD/cascade and $BUILD/libcascade_attn.so"
