// Memory-bound skinny GEMM for decode: y[M, N] = x[M, K] · w[N, K]ᵀ with 1 <= M <= 8, bf16 x and w,
// fp32 accumulation, bf16 or fp32 y. One warp per output column streams its row of w with 16-byte
// loads; x is staged in shared memory. Gemm::run routes small M here (cuBLASLt picks tiles that
// leave most SMs idle at M <= 8).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace cascade::cuda {

// Largest M the GEMV path takes.
inline constexpr int kGemvMaxM = 8;

// True when launch_gemv can run this shape: 1 <= M <= 8, K a multiple of 8, x and w 16-byte
// aligned, and the padded x tile (M rounded up to 1/2/4/8 rows of K bf16) fits in shared memory.
bool gemv_supported(const __nv_bfloat16* x, const __nv_bfloat16* w, int M, int K);

// Enqueues y = x · wᵀ on `stream` (shape must satisfy gemv_supported). `sm_count` sizes the grid.
// Returns the launch error, if any.
cudaError_t launch_gemv(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int M,
                        int N, int K, int sm_count, cudaStream_t stream);

// y = (silu(gate) * up) · wᵀ where gate_up is [M, 2K] (gate in the first K columns of a row, up
// in the last K), bf16 y; silu(gate) * up is rounded to bf16 as launch_silu_mul rounds it. Same
// shape rules as launch_gemv (gemv_supported(gate_up, w, M, K)). y must not overlap gate_up.
cudaError_t launch_gemv_silu(const __nv_bfloat16* gate_up, const __nv_bfloat16* w, __nv_bfloat16* y, int M,
                             int N, int K, int sm_count, cudaStream_t stream);

}  // namespace cascade::cuda
