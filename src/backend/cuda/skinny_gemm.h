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
#include <cstdint>

namespace cascade::cuda {

// What the skinny GEMM does around the product (all off by default), so that a decode layer's
// residual add + RMSNorm and SiLU need no kernels of their own:
// - Residual epilogue (residual set; y unused): h = residual + bf16(x · wᵀ) goes to
//   residual_out, bf16(h * gamma) to x_out (the next GEMM's input: the norm's weight applied, its
//   scale not), and each 64-column tile's sum of h² per row to ssq_out[tile * M + row]
//   (ceil(N / 64) tiles, each summed in a fixed order: the same bits on every run).
// - Folded norm (ssq_in set; x is such an x_out): y[m, :] is scaled by rsqrt(sum over the
//   ssq_tiles tiles of ssq_in / K + eps), so y = RMSNorm(h) · wᵀ up to where bf16 rounding falls.
// - Gated (gated, with the folded norm; bf16 y): w holds 2N rows, gate then up (a gate_up projection), and
//   y[m, j] = silu(g) * u with g and u rounded to bf16 as silu_mul_kernel takes them.
struct SkinnyFusion {
  const float* ssq_in = nullptr;
  int ssq_tiles = 0;
  float eps = 1e-6f;
  bool gated = false;
  const float* residual = nullptr;
  float* residual_out = nullptr;  // may be residual itself
  const __nv_bfloat16* gamma = nullptr;
  __nv_bfloat16* x_out = nullptr;
  float* ssq_out = nullptr;
};

// Greedy argmax of each fp32 output row, formed as the product is written (lm_head at 3-64 rows,
// so that greedy decoding needs no sampling kernel). keys[m] must be zero at the launch; after
// it, skinny_argmax_id(keys[m]) is the lowest column holding row m's largest value, NaN skipped,
// -1 if no value is > -inf (the sampler's greedy rule, the same ids). Each CTA folds its columns
// into keys[m] with one 64-bit atomic max of (value bits in order, then the id reversed), so the
// result does not depend on timing, and nothing waits on the atomics inside the kernel.
struct SkinnyArgmax {
  unsigned long long* keys = nullptr;  // [M]
};

// A SkinnyArgmax key's id: -1 for the key 0 (no value > -inf in the row).
constexpr std::int32_t skinny_argmax_id(unsigned long long key) {
  return key == 0ull ? -1 : static_cast<std::int32_t>(0xffffffffu - static_cast<std::uint32_t>(key & 0xffffffffull));
}

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

// The same with fp32 y and each row's greedy argmax (SkinnyArgmax above; cudaErrorInvalidValue
// without its keys). y may be nullptr: then only the keys are written.
cudaError_t launch_skinny_gemm_argmax(const __nv_bfloat16* x, const __nv_bfloat16* w, float* y, int M, int N,
                                      int K, const SkinnyArgmax& argmax, int target_ctas, cudaStream_t stream);

// The same with a fusion (SkinnyFusion above; y bf16). N is y's columns (gated: w has 2N rows).
// Buffers written must not overlap those read, except residual_out == residual. The residual
// epilogue takes no y and no folded norm; the gated form needs the folded norm
// (cudaErrorInvalidValue otherwise).
cudaError_t launch_skinny_gemm_fused(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y,
                                     int M, int N, int K, const SkinnyFusion& fusion, int target_ctas,
                                     cudaStream_t stream);

}  // namespace cascade::cuda
