// GEMM y[M, N] = x[M, K] · w[N, K]ᵀ with bf16 inputs, fp32 accumulation and a bf16 or fp32 output.
// M <= 2 (decode) goes to the memory-bound GEMV kernel of gemv.h when the shape allows it, and
// 8 < M <= 64 with a bf16 output to gemv.h's tensor-core skinny kernel; larger M goes through
// cuBLASLt, whose plan (descriptors + heuristic algorithm) is cached per shape, so
// after warm-up a call does no host allocation and is safe inside CUDA-graph capture.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "backend/cuda/gemv.h"

namespace cascade::cuda {

// Which kernel Gemm::run uses for a shape.
enum class GemmPath { kGemv, kTensorCore, kCublasLt };

class Gemm {
 public:
  // Creates the cuBLASLt handle and workspace on the current device.
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // y = x · wᵀ (row-major). `y` is bf16 unless y_f32. Throws cascade::Error(kCuda) on failure.
  void run(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int M, int N,
           int K, cudaStream_t stream);

  // y = (silu(gate) * up) · wᵀ for gate_up [M, 2K] in one GEMV or tensor-core kernel (M <= 64). Returns false,
  // doing nothing, when the GEMV path does not take the shape: the caller then runs silu_mul and
  // run(). y (bf16) must not overlap gate_up.
  bool run_silu_gemv(const __nv_bfloat16* gate_up, const __nv_bfloat16* w, __nv_bfloat16* y, int M, int N,
                     int K, cudaStream_t stream);

  // y = norm_x · wᵀ with the residual add + RMSNorm of nm formed in the GEMV (gemv.h, M <= 2).
  // Returns false, doing nothing, when the GEMV path does not take the shape: the caller then runs
  // the norm kernel and run().
  bool run_norm_gemv(const GemvNorm& nm, const __nv_bfloat16* w, __nv_bfloat16* y, int M, int N, int K,
                     cudaStream_t stream);

  // The kernel run() takes for this call (tests and benchmarks name it).
  GemmPath path(const __nv_bfloat16* x, const __nv_bfloat16* w, bool y_f32, int M, int N, int K) const;

  // Same product, always through cuBLASLt (tests compare the two paths; benchmarks time both).
  void run_cublaslt(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int M,
                    int N, int K, cudaStream_t stream);

 private:
  struct Plan;
  Plan& plan_for(int M, int N, int K, bool y_f32);

  void* handle_ = nullptr;  // cublasLtHandle_t
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
  int sm_count_ = 0;  // SMs of the current device, sizes the GEMV grid
  bool gemv_off_ = false;  // CASCADE_GEMM_NO_GEMV=1: cuBLASLt for every M (A/B benchmarks)
  bool norm_gemv_off_ = false;  // CASCADE_GEMV_NO_NORM=1: separate norm kernels (A/B benchmarks)
  bool mma_off_ = false;   // CASCADE_GEMM_NO_MMA=1: cuBLASLt for 8 < M <= 64 (A/B benchmarks)
  MmaWorkspace mma_ws_;    // split-K scratch of the tensor-core path
  std::map<std::tuple<int, int, int, bool>, std::unique_ptr<Plan>> plans_;
};

}  // namespace cascade::cuda
