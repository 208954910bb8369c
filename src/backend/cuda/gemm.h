// GEMM y[M, N] = x[M, K] · w[N, K]ᵀ with bf16 inputs, fp32 accumulation and a bf16 or fp32 output.
// M <= 2 (decode) goes to the memory-bound GEMV kernel of gemv.h when the shape allows it,
// 3 <= M <= 64 to the tensor-core skinny GEMM of skinny_gemm.h on sm_90a; larger M (and every
// shape the others do not take) goes through cuBLASLt, whose plan (descriptors + heuristic
// algorithm) is cached per shape, so after warm-up a call does no host allocation and is safe
// inside CUDA-graph capture.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <tuple>

#include "backend/cuda/gemv.h"
#include "backend/cuda/skinny_gemm.h"

namespace cascade::cuda {

class Gemm {
 public:
  // Creates the cuBLASLt handle and workspace on the current device.
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // y = x · wᵀ (row-major). `y` is bf16 unless y_f32. Throws cascade::Error(kCuda) on failure.
  // y must not overlap x or w; w (weights) must not be written by the kernel just before: the
  // GEMV and skinny paths read it before their PDL wait (launch.cuh).
  void run(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int M, int N,
           int K, cudaStream_t stream);

  // y = (silu(gate) * up) · wᵀ for gate_up [M, 2K] in one GEMV kernel (small M). Returns false,
  // doing nothing, when the GEMV path does not take the shape: the caller then runs silu_mul and
  // run(). y (bf16) must not overlap gate_up.
  bool run_silu_gemv(const __nv_bfloat16* gate_up, const __nv_bfloat16* w, __nv_bfloat16* y, int M, int N,
                     int K, cudaStream_t stream, bool early_release = false);

  // y = norm_x · wᵀ with the residual add + RMSNorm of nm formed in the GEMV (gemv.h, M <= 2),
  // and with argmax (fp32 y only) each row's greedy argmax as well. Returns false, doing nothing,
  // when the GEMV path does not take the call (shape, alignment, or y overlapping what the norm
  // reads: gemv_norm_supported): the caller then runs the norm kernel and run().
  bool run_norm_gemv(const GemvNorm& nm, const __nv_bfloat16* w, void* y, bool y_f32, int M, int N, int K,
                     cudaStream_t stream, const GemvArgmax* argmax = nullptr, bool early_release = false);

  // run() with fp32 y; where run() takes the skinny GEMM it also forms each row's greedy argmax
  // (skinny_gemm.h's SkinnyArgmax, whose keys cover M rows) and returns true, else false. With
  // write_y false the skinny GEMM leaves y unwritten (elsewhere y is always written).
  bool run_argmax(const __nv_bfloat16* x, const __nv_bfloat16* w, float* y, int M, int N, int K,
                  const SkinnyArgmax& argmax, cudaStream_t stream, bool write_y = true);

  // Whether run() sends 3 <= M <= 64 to the skinny GEMM (skinny_gemm.h) on this device.
  bool skinny_enabled() const { return skinny_on_; }

  // Whether run_fused() takes M rows with these K (each GEMM's inner size): the skinny GEMM is on
  // (skinny_enabled), M is in its range (above the GEMV's), every K is a multiple of 8 (the
  // skinny GEMM's rule; run() sends other shapes to cuBLASLt), and CASCADE_GEMM_NO_FUSE=1 (A/B)
  // is not set. x, w and y must be 16-byte aligned as well (cudaMalloc'd buffers are).
  bool fused_takes(int M, std::initializer_list<int> ks) const;

  // The skinny GEMM with a fusion (skinny_gemm.h's SkinnyFusion: residual epilogue, folded norm,
  // gated SiLU); the caller checks fused_takes first. Throws cascade::Error (kInvalidArgument for
  // a shape it does not take, kCuda on a failed launch).
  void run_fused(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, int M, int N, int K,
                 const SkinnyFusion& fusion, cudaStream_t stream);

  // SMs of the device (sizes GEMV grids and their argmax parts).
  int sm_count() const { return sm_count_; }

  // Same product, always through cuBLASLt (tests compare the two paths; benchmarks time both).
  void run_cublaslt(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int M,
                    int N, int K, cudaStream_t stream);

 private:
  // Where run() sends an M x N x K product (none for an empty one).
  enum class Route { kNone, kGemv, kSkinny, kCublasLt };
  Route route(const __nv_bfloat16* x, const __nv_bfloat16* w, int M, int N, int K) const;
  // run()'s launch once the route is known (run_argmax falls back to it without routing again).
  void launch(Route r, const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int M, int N, int K,
              cudaStream_t stream);
  struct Plan;
  Plan& plan_for(int M, int N, int K, bool y_f32);

  void* handle_ = nullptr;  // cublasLtHandle_t
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
  int sm_count_ = 0;  // SMs of the current device, sizes the GEMV grid
  bool gemv_off_ = false;  // CASCADE_GEMM_NO_GEMV=1: no GEMV, cuBLASLt at M <= 2 (A/B benchmarks)
  bool norm_gemv_off_ = false;  // CASCADE_GEMV_NO_NORM=1: separate norm kernels (A/B benchmarks)
  bool skinny_on_ = false;  // skinny_gemm_available() and not CASCADE_GEMM_NO_SKINNY=1 (A/B)
  bool fuse_on_ = false;    // skinny_on_ and not CASCADE_GEMM_NO_FUSE=1 (A/B)
  int skinny_target_ctas_ = 0;  // split-K sizes skinny grids to about this many CTAs
  std::map<std::tuple<int, int, int, bool>, std::unique_ptr<Plan>> plans_;
};

}  // namespace cascade::cuda
