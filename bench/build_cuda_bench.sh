#!/usr/bin/env bash
# Builds the CUDA benchmarks here (no GPU needed) against an already built CUDA build directory:
#   bench/build_cuda_bench.sh [BUILD_DIR]     (default build-cuda2; needs libcascade.a and
#                                              libcascade_cuda.a, e.g. `cmake --build B --target cascade`)
# LIBCASCADE=path overrides the cascade library (e.g. an older build while the tree is mid-edit).
# Outputs BUILD_DIR/cuda_attention_bench, cuda_gemm_bench, cuda_decode_bench and kv_read_probe (sm_90a). The CMake lines
# the lead may add instead are in bench/NOTES_cuda.md.
set -euo pipefail
cd "$(dirname "$0")/.."
B="${1:-build-cuda2}"
LIBCASCADE="${LIBCASCADE:-$B/libcascade.a}"  # any build of the cascade library with these sources
CUDA="${CUDA_HOME:-/usr/local/cuda}"
ARCH="-gencode=arch=compute_90a,code=sm_90a"
DEFS="-DFMT_HEADER_ONLY -DCASCADE_HAVE_CUDA=1"
"$CUDA/bin/nvcc" -O3 -std=c++20 $ARCH $DEFS --expt-relaxed-constexpr -Isrc -Iinclude \
  bench/cuda_attention_bench.cu "$B/libcascade_cuda.a" -lcublasLt -o "$B/cuda_attention_bench"
"$CUDA/bin/nvcc" -O3 -std=c++20 $ARCH $DEFS --expt-relaxed-constexpr -Isrc -Iinclude \
  bench/cuda_gemm_bench.cu "$B/libcascade_cuda.a" -lcublasLt -o "$B/cuda_gemm_bench"
"$CUDA/bin/nvcc" -O3 -std=c++20 $ARCH $DEFS -Isrc -Iinclude bench/kv_read_probe.cu -o "$B/kv_read_probe"
g++ -O2 -std=c++20 $DEFS -Isrc -Iinclude -I"$CUDA/include" -fopenmp \
  bench/cuda_decode_bench.cpp -o "$B/cuda_decode_bench" \
  -Wl,--as-needed "$LIBCASCADE" "$B/libcascade_cuda.a" "$LIBCASCADE" \
  -L"$CUDA/lib64" -L"$CUDA/lib" -lcublasLt -lcudart_static -lssl -lcrypto -lpcre2-8 -lutf8proc \
  -lpthread -ldl -lrt
echo "built $B/cuda_attention_bench $B/cuda_gemm_bench $B/cuda_decode_bench $B/kv_read_probe"
