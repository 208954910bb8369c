// Memory-bound skinny GEMM for decode: y[M, N] = x[M, K] · w[N, K]ᵀ with 1 <= M <= 2, bf16 x and w,
// fp32 accumulation, bf16 or fp32 y. One warp per output column streams its row of w with 16-byte
// loads; x is staged in shared memory (optionally formed there: silu(gate) * up, or the residual
// add + RMSNorm that precedes the projection). Gemm::run routes M <= 2 here: cuBLASLt picks tiles
// that leave most SMs idle at M = 1, ties at M = 2 (where the fused norm makes the GEMV path one
// kernel shorter) and is faster from M = 3 on, where the GEMV's per-row bf16 unpacking and FMAs
// make it instruction-bound (decode steps at batch 3-8 took 1.6-1.7x longer through it; v6 in
// bench/NOTES_cuda.md).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/kernels.h"

namespace cascade::cuda {

// Largest M the GEMV path takes.
inline constexpr int kGemvMaxM = 2;

// True when launch_gemv can run this shape: 1 <= M <= 2, K a multiple of 8, x and w 16-byte
// aligned, and the padded x tile (M rounded up to 1/2 rows of K bf16) fits in shared memory.
bool gemv_supported(const __nv_bfloat16* x, const __nv_bfloat16* w, int M, int K);

// Enqueues y = x · wᵀ on `stream` (shape must satisfy gemv_supported). `sm_count` sizes the grid.
// Returns the launch error, if any.
cudaError_t launch_gemv(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int M,
                        int N, int K, int sm_count, cudaStream_t stream);

// y = (silu(gate) * up) · wᵀ where gate_up is [M, 2K] (gate in the first K columns of a row, up
// in the last K), bf16 y; silu(gate) * up is rounded to bf16 as launch_silu_mul rounds it. Same
// shape rules as launch_gemv (gemv_supported(gate_up, w, M, K)). y must not overlap gate_up.
// early_release: launch.cuh's early release (the next kernel's pre-wait work overlaps this one's
// wait); only where the previous kernel released after its wait and the next one does too.
cudaError_t launch_gemv_silu(const __nv_bfloat16* gate_up, const __nv_bfloat16* w, __nv_bfloat16* y, int M,
                             int N, int K, int sm_count, cudaStream_t stream, bool early_release = false);

// The residual add + RMSNorm (kernels.h's ResidualNorm) formed while the GEMV stages x, for the
// projection that follows a norm: x = the norm's bf16 output, rounded as launch_add_rms_norm
// rounds it (its sum of squares may differ in the last bits: another order); block 0 writes h to
// residual_out, which must be another buffer than residual (the other blocks still read it) and
// nullptr with row_index. Rows are contiguous [rows, K].
using GemvNorm = ResidualNorm;

// Greedy argmax of each fp32 output row, formed as the GEMV writes the row (lm_head at batch 1-2,
// so that greedy decoding needs no sampling kernel): out[m] = the lowest column holding the row's
// largest value, NaN skipped, -1 if no value is > -inf (the sampler's greedy rule, the same ids).
// Every block leaves its candidate in part_v/part_i[m * blocks + block] (capacity
// gemv_argmax_parts(M)); the last block to finish (counter, zero before the call and left zero)
// combines them.
struct GemvArgmax {
  float* part_v = nullptr;
  std::int32_t* part_i = nullptr;
  unsigned* counter = nullptr;
  std::int32_t* out = nullptr;  // [M]
};

// Capacity part_v and part_i need for M rows (M * the largest grid the launcher uses).
int gemv_argmax_parts(int M, int sm_count);

// True when launch_gemv_norm can run this call: gemv_supported, 16-byte aligned rows, y and
// residual_out overlapping neither residual nor delta, and the x tile plus M fp32 rows of K fit in
// shared memory.
bool gemv_norm_supported(const GemvNorm& nm, const __nv_bfloat16* w, const void* y, bool y_f32, int M,
                         int N, int K);

// Enqueues y = norm_x · wᵀ for norm_x formed from nm as above; with argmax (y_f32 only, may be
// nullptr) also each row's greedy argmax.
cudaError_t launch_gemv_norm(const GemvNorm& nm, const __nv_bfloat16* w, void* y, bool y_f32, int M, int N,
                             int K, int sm_count, cudaStream_t stream, const GemvArgmax* argmax = nullptr,
                             bool early_release = false);

}  // namespace cascade::cuda
