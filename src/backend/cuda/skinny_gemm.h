// Tensor-core skinny GEMM for decode batches: y[M, N] = x[M, K] · w[N, K]ᵀ with 3 <= M <= 64
// (Gemm::run routes it between the GEMV, M <= 2, and cuBLASLt, M > 64), bf16 x and w, fp32
// accumulation, bf16 or fp32 y. At these M the product is bound by reading w once, and small
// GEMMs (4-12 MB of weights) by the latency around it.
//
// One CTA (one warpgroup) takes 64 rows of w over a run of K (split-K when there are fewer
// 64-row tiles than two per SM); w and x are staged in 64-column chunks through a four-stage
// cp.async ring in the 128-byte-swizzled layout wgmma reads, and each chunk is four
// wgmma.m64n64k16 (w rows as the M side, so x's rows, zero-padded to 64, are the N side). The w
// loads of the first three chunks are issued before the PDL wait (weights are constant;
// launch.cuh). The split-K CTAs of a tile form a thread-block cluster and add their partial
// tiles through distributed shared memory in rank order, so results do not depend on timing.
// Needs the sm_90a code (skinny_gemm_available()); elsewhere Gemm keeps cuBLASLt.
//
// Measured on H100 (bench/NOTES_cuda.md, v8): decode steps at batch 3-32 0-7% faster than with
// cuBLASLt (card to card), batch 64 within 1%; lm_head 5-7% faster at 4-64 rows.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace cascade::cuda {

inline constexpr int kSkinnyMinM = 3;
inline constexpr int kSkinnyMaxM = 64;

// True when the current device runs the kernel's sm_90a code (an H100/H200 with this build's
// sm_90a cubin loaded; false on older devices, in a build without sm_90a, and without a device).
// Probed once per device with a one-thread kernel and a synchronous copy: call it first outside
// stream capture (Gemm's constructor does).
bool skinny_gemm_available();

// True when launch_skinny_gemm takes the shape: kSkinnyMinM <= M <= kSkinnyMaxM, N >= 1, K a
// positive multiple of 8, x and w 16-byte aligned (availability is checked separately).
bool skinny_gemm_supported(const __nv_bfloat16* x, const __nv_bfloat16* w, int M, int N, int K);

// Enqueues y = x · wᵀ (shape must satisfy skinny_gemm_supported; cudaErrorNotSupported where
// skinny_gemm_available() is false). y must not overlap x or w, and w must be complete before
// the previous kernel in the stream started (it is read before the PDL wait: weights). target_ctas: split-K (at most 8 splits, a cluster per tile) keeps the grid within about
// this many CTAs (Gemm passes twice the SM count: two CTAs fit an SM); 1 means no split.
cudaError_t launch_skinny_gemm(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32,
                               int M, int N, int K, int target_ctas, cudaStream_t stream);

}  // namespace cascade::cuda
