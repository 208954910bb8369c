#include "backend/cuda/gemm.h"

#include <cublasLt.h>

#include "backend/cuda/ab_switch.h"
#include "backend/cuda/cuda_check.h"

#define CUBLAS_TRY(expr)                                                                    \
  do {                                                                                      \
    const cublasStatus_t cascade_cublas_st_ = (expr);                                       \
    if (cascade_cublas_st_ != CUBLAS_STATUS_SUCCESS) [[unlikely]] {                         \
      ::cascade::throw_error(::cascade::ErrorCode::kCuda, "{}:{}: {} failed: {}", __FILE__, \
                             __LINE__, #expr, cublasLtGetStatusString(cascade_cublas_st_));   \
    }                                                                                       \
  } while (0)

namespace cascade::cuda {

struct Gemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (desc) cublasLtMatmulDescDestroy(desc);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
  }
};

Gemm::Gemm() {
  cublasLtHandle_t h = nullptr;
  CUBLAS_TRY(cublasLtCreate(&h));
  handle_ = h;
  workspace_bytes_ = 32u << 20;
  CUDA_TRY(cudaMalloc(&workspace_, workspace_bytes_));
  int dev = 0;
  CUDA_TRY(cudaGetDevice(&dev));
  CUDA_TRY(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, dev));
  gemv_off_ = ab_switch_on("CASCADE_GEMM_NO_GEMV");
  norm_gemv_off_ = ab_switch_on("CASCADE_GEMV_NO_NORM");
  skinny_on_ = !ab_switch_on("CASCADE_GEMM_NO_SKINNY") && skinny_gemm_available();
  fuse_on_ = skinny_on_ && !ab_switch_on("CASCADE_GEMM_NO_FUSE");
  skinny_target_ctas_ = 2 * sm_count_;  // two skinny CTAs fit an SM (one per SM measured the same)
}

Gemm::~Gemm() {
  plans_.clear();
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(static_cast<cublasLtHandle_t>(handle_));
}

Gemm::Plan& Gemm::plan_for(int M, int N, int K, bool y_f32) {
  auto key = std::make_tuple(M, N, K, y_f32);
  auto it = plans_.find(key);
  if (it != plans_.end()) return *it->second;
  auto plan = std::make_unique<Plan>();
  // Row-major y[M,N] = x[M,K]·w[N,K]ᵀ is column-major yᵀ[N,M] = op_T(w)[N,K] · x_colmajor[K,M].
  CUBLAS_TRY(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  CUBLAS_TRY(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  CUBLAS_TRY(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  CUBLAS_TRY(cublasLtMatrixLayoutCreate(&plan->a, CUDA_R_16BF, K, N, K));
  CUBLAS_TRY(cublasLtMatrixLayoutCreate(&plan->b, CUDA_R_16BF, K, M, K));
  CUBLAS_TRY(cublasLtMatrixLayoutCreate(&plan->c, y_f32 ? CUDA_R_32F : CUDA_R_16BF, N, M, N));
  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&pref));
  CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                  &workspace_bytes_, sizeof(workspace_bytes_)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(
      static_cast<cublasLtHandle_t>(handle_), plan->desc, plan->a, plan->b, plan->c, plan->c,
      pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    throw_error(ErrorCode::kCuda, "cuBLASLt has no algorithm for GEMM M={} N={} K={} ({} out): {}",
                M, N, K, y_f32 ? "fp32" : "bf16", cublasLtGetStatusString(st));
  }
  plan->algo = result.algo;
  auto& ref = *plan;
  plans_.emplace(key, std::move(plan));
  return ref;
}

Gemm::Route Gemm::route(const __nv_bfloat16* x, const __nv_bfloat16* w, int M, int N, int K) const {
  if (M == 0 || N == 0) return Route::kNone;
  if (!gemv_off_ && gemv_supported(x, w, M, K)) return Route::kGemv;
  if (skinny_on_ && skinny_gemm_supported(x, w, M, N, K)) return Route::kSkinny;
  return Route::kCublasLt;
}

void Gemm::run(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int M, int N,
               int K, cudaStream_t stream) {
  launch(route(x, w, M, N, K), x, w, y, y_f32, M, N, K, stream);
}

void Gemm::launch(Route r, const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int M, int N,
                  int K, cudaStream_t stream) {
  switch (r) {
    case Route::kNone:
      return;
    case Route::kGemv:
      CUDA_TRY(launch_gemv(x, w, y, y_f32, M, N, K, sm_count_, stream));
      return;
    case Route::kSkinny:
      CUDA_TRY(launch_skinny_gemm(x, w, y, y_f32, M, N, K, skinny_target_ctas_, stream));
      return;
    case Route::kCublasLt:
      run_cublaslt(x, w, y, y_f32, M, N, K, stream);
      return;
  }
}

bool Gemm::run_argmax(const __nv_bfloat16* x, const __nv_bfloat16* w, float* y, int M, int N, int K,
                      const SkinnyArgmax& argmax, cudaStream_t stream, bool write_y) {
  const Route r = route(x, w, M, N, K);
  if (r != Route::kSkinny) {
    launch(r, x, w, y, true, M, N, K, stream);
    return false;
  }
  CUDA_TRY(launch_skinny_gemm_argmax(x, w, write_y ? y : nullptr, M, N, K, argmax, skinny_target_ctas_, stream));
  return true;
}

bool Gemm::fused_takes(int M, std::initializer_list<int> ks) const {
  if (!fuse_on_ || M < kSkinnyMinM || M > kSkinnyMaxM) return false;  // above the GEMV's rows
  for (const int k : ks) {
    if (k < 8 || k % 8 != 0) return false;
  }
  return true;
}

void Gemm::run_fused(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, int M, int N, int K,
                     const SkinnyFusion& fusion, cudaStream_t stream) {
  if (M == 0 || N == 0) return;
  if (!fused_takes(M, {K}) || !skinny_gemm_supported(x, w, M, N, K)) {
    throw_error(ErrorCode::kInvalidArgument, "fused skinny GEMM does not take M={} N={} K={}", M, N, K);
  }
  CUDA_TRY(launch_skinny_gemm_fused(x, w, y, M, N, K, fusion, skinny_target_ctas_, stream));
}

bool Gemm::run_silu_gemv(const __nv_bfloat16* gate_up, const __nv_bfloat16* w, __nv_bfloat16* y, int M,
                         int N, int K, cudaStream_t stream, bool early_release) {
  if (M == 0 || N == 0) return true;
  if (gemv_off_ || !gemv_supported(gate_up, w, M, K)) return false;
  CUDA_TRY(launch_gemv_silu(gate_up, w, y, M, N, K, sm_count_, stream, early_release));
  return true;
}

bool Gemm::run_norm_gemv(const GemvNorm& nm, const __nv_bfloat16* w, void* y, bool y_f32, int M, int N, int K,
                         cudaStream_t stream, const GemvArgmax* argmax, bool early_release) {
  if (M == 0 || N == 0) return true;
  if (gemv_off_ || norm_gemv_off_ || (argmax != nullptr && !y_f32) ||
      !gemv_norm_supported(nm, w, y, y_f32, M, N, K)) {
    return false;
  }
  CUDA_TRY(launch_gemv_norm(nm, w, y, y_f32, M, N, K, sm_count_, stream, argmax, early_release));
  return true;
}

void Gemm::run_cublaslt(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int M,
                        int N, int K, cudaStream_t stream) {
  if (M == 0 || N == 0) return;
  Plan& plan = plan_for(M, N, K, y_f32);
  const float alpha = 1.0f, beta = 0.0f;
  CUBLAS_TRY(cublasLtMatmul(static_cast<cublasLtHandle_t>(handle_), plan.desc, &alpha, w, plan.a, x,
                            plan.b, &beta, y, plan.c, y, plan.c, &plan.algo, workspace_,
                            workspace_bytes_, stream));
}

}  // namespace cascade::cuda
