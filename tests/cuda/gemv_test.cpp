// The small-M GEMV path of Gemm (M <= 2) against a float64 CPU product, for every M it takes and
// decode-like shapes (Qwen3-0.6B layer GEMMs and lm_head), ragged N and K, poisoned outputs, the
// silu and residual-add + RMSNorm prologues, and the cuBLASLt fallback for shapes the GEMV kernel
// does not take.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/gemm.h"
#include "backend/cuda/gemv.h"
#include "backend/cuda/kernels.h"
#include "cuda_test_util.h"

namespace cascade::cuda::test {
namespace {

struct Shape {
  int n, k;
};

// Runs Gemm::run (bf16 and fp32 out) and checks both against the float64 product.
void check_gemm(Gemm& gemm, std::mt19937_64& rng, int M, Shape s, bool expect_gemv) {
  auto x = random_vec(rng, static_cast<std::size_t>(M) * s.k);
  auto w = random_vec(rng, static_cast<std::size_t>(s.n) * s.k);
  auto d_x = upload(to_bf16(x)), d_w = upload(to_bf16(w));
  EXPECT_EQ(gemv_supported(d_x.get(), d_w.get(), M, s.k), expect_gemv)
      << "M=" << M << " N=" << s.n << " K=" << s.k;
  const auto ref = matmul_f64(x, w, M, s.n, s.k);
  DeviceBuffer<bf16> yb(ref.size());
  DeviceBuffer<float> yf(ref.size());
  poison(yb);
  poison(yf);
  gemm.run(d_x.get(), d_w.get(), yb.get(), false, M, s.n, s.k, nullptr);
  gemm.run(d_x.get(), d_w.get(), yf.get(), true, M, s.n, s.k, nullptr);
  const auto got_b = from_bf16(download(yb, ref.size()));
  const auto got_f = download(yf, ref.size());
  EXPECT_LT(rel_error(got_b, ref), 1e-2) << "bf16 out, M=" << M << " N=" << s.n << " K=" << s.k;
  EXPECT_LT(max_rel_error(got_b, ref), 1e-2) << "bf16 out, M=" << M << " N=" << s.n << " K=" << s.k;
  EXPECT_LT(rel_error(got_f, ref), 1e-5) << "fp32 out, M=" << M << " N=" << s.n << " K=" << s.k;
  EXPECT_LT(max_rel_error(got_f, ref), 1e-5) << "fp32 out, M=" << M << " N=" << s.n << " K=" << s.k;
}

TEST(CudaGemv, EveryMUpTo2MatchesFloat64) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(17);
  Gemm gemm;
  // N not a multiple of the 4-column block; K not a multiple of 8 * 32 lanes * 8 loads.
  const Shape shapes[] = {{1, 8},       {3, 40},       {37, 264},   {517, 1000},
                          {1024, 1024}, {2047, 1032}, {3001, 520}, {4099, 3072}};
  for (int M = 1; M <= kGemvMaxM; ++M) {
    for (Shape s : shapes) check_gemm(gemm, rng, M, s, true);
  }
}

TEST(CudaGemv, Qwen3DecodeShapes) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(18);
  Gemm gemm;
  // qkv, o_proj, gate_up, down of Qwen3-0.6B.
  const Shape shapes[] = {{4096, 1024}, {1024, 2048}, {6144, 1024}, {1024, 3072}};
  for (int M : {1, 2}) {
    for (Shape s : shapes) check_gemm(gemm, rng, M, s, true);
  }
}

TEST(CudaGemv, LmHeadShape) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(19);
  Gemm gemm;
  for (int M : {1, 2}) check_gemm(gemm, rng, M, {151936, 1024}, true);
}

TEST(CudaGemv, WideKUsesOptInSharedMemory) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(20);
  Gemm gemm;
  check_gemm(gemm, rng, 2, {300, 24576}, true);  // 96 KB x tile
  check_gemm(gemm, rng, 1, {129, 40000}, true);  // over 48 KB
}

TEST(CudaGemv, UnsupportedShapesFallBackToCublasLt) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(21);
  Gemm gemm;
  check_gemm(gemm, rng, 1, {257, 1030}, false);  // K not a multiple of 8
  check_gemm(gemm, rng, 2, {64, 24584}, false);  // x tile over 96 KB
  check_gemm(gemm, rng, 3, {300, 1024}, false);  // M above 2: cuBLASLt is faster there
  check_gemm(gemm, rng, 16, {1000, 1024}, false);
}

TEST(CudaGemv, MisalignedPointersAreNotTaken) {
  SKIP_WITHOUT_GPU();
  DeviceBuffer<bf16> x(3 * 256 + 1), w(70 * 256 + 1);
  EXPECT_TRUE(gemv_supported(x.get(), w.get(), 2, 256));
  // Views one element in are only 2-byte aligned: no 16-byte loads from them.
  EXPECT_FALSE(gemv_supported(x.get() + 1, w.get(), 2, 256));
  EXPECT_FALSE(gemv_supported(x.get(), w.get() + 1, 2, 256));
}

TEST(CudaGemv, AgreesWithCublasLtPath) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(23);
  Gemm gemm;
  EXPECT_LT(run_vs_cublaslt(gemm, rng, 2, 2050, 1024), 1e-5);
}

// The down projection with silu(gate) * up formed while staging x: against a float64 product of the
// bf16-rounded activation, and bit for bit against the two-kernel path (silu_mul, then the GEMV).
TEST(CudaGemv, SiluGemvMatchesFloat64AndTheTwoKernelPath) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(29);
  Gemm gemm;
  for (const int M : {1, 2}) {
    for (const Shape s : {Shape{1024, 3072}, Shape{50, 136}}) {
      const int N = s.n, K = s.k;
      auto gu = random_vec(rng, static_cast<std::size_t>(M) * 2 * K, -3.0f, 3.0f);
      auto w = random_vec(rng, static_cast<std::size_t>(N) * K);
      const auto gu_b = to_bf16(gu);
      gu = from_bf16(gu_b);
      const auto ref = matmul_f64(silu_mul_ref(gu, M, K), w, M, N, K);
      auto d_gu = upload(gu_b), d_w = upload(to_bf16(w));
      DeviceBuffer<bf16> fused(ref.size()), act_d(static_cast<std::size_t>(M) * K), two(ref.size());
      poison(fused);
      poison(two);
      ASSERT_TRUE(gemm.run_silu_gemv(d_gu.get(), d_w.get(), fused.get(), M, N, K, nullptr));
      ASSERT_EQ(launch_silu_mul({d_gu.get(), act_d.get(), M, K}, nullptr), cudaSuccess);
      gemm.run(act_d.get(), d_w.get(), two.get(), false, M, N, K, nullptr);
      const auto got = from_bf16(download(fused, ref.size()));
      const auto want_two = from_bf16(download(two, ref.size()));
      EXPECT_LT(max_rel_error(got, ref), 1e-2) << "M=" << M << " N=" << N << " K=" << K;
      EXPECT_EQ(got, want_two) << "M=" << M << " N=" << N << " K=" << K;
    }
  }
  // Shapes the GEMV does not take are refused, so the caller runs the two kernels.
  auto d = upload(to_bf16(random_vec(rng, 3 * 2 * 64)));
  auto dw = upload(to_bf16(random_vec(rng, 16 * 64)));
  DeviceBuffer<bf16> y(3 * 16);
  EXPECT_FALSE(gemm.run_silu_gemv(d.get(), dw.get(), y.get(), 3, 16, 64, nullptr));
}

// The residual add + RMSNorm formed inside the GEMV (the projections after a norm, small batches):
// the new residual bit for bit (one fp32 add), the product against float64 of the normalised rows
// (rounded to bf16 as the norm kernel rounds them), and against the two-kernel path (norm kernel,
// then the GEMV) within bf16 rounding (their sums of squares run in different orders).
TEST(CudaGemv, NormGemvMatchesFloat64AndTheTwoKernelPath) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(37);
  Gemm gemm;
  int sms = 0;
  CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  for (const int M : {1, 2}) {
    // (300, 4096) at M = 2: 48 KB of shared memory, the opt-in path.
    for (const Shape s : {Shape{4096, 1024}, Shape{52, 136}, Shape{300, 4096}}) {
      for (const bool with_delta : {true, false}) {
        const int N = s.n, K = s.k;
        const float eps = 1e-6f;
        auto res = random_vec(rng, static_cast<std::size_t>(M) * K, -4.0f, 4.0f, false);
        auto delta = random_vec(rng, static_cast<std::size_t>(M) * K, -2.0f, 2.0f);
        auto gamma = random_vec(rng, K, 0.5f, 1.5f);
        auto w = random_vec(rng, static_cast<std::size_t>(N) * K);
        std::vector<float> h(res.size()), x(res.size());
        for (std::size_t i = 0; i < h.size(); ++i) h[i] = res[i] + (with_delta ? delta[i] : 0.0f);
        for (int m = 0; m < M; ++m) {
          double ss = 0.0;
          for (int k = 0; k < K; ++k) ss += static_cast<double>(h[m * K + k]) * h[m * K + k];
          const double inv = 1.0 / std::sqrt(ss / K + eps);
          for (int k = 0; k < K; ++k) {
            x[m * K + k] = round_bf16(gamma[k] * round_bf16(static_cast<float>(h[m * K + k] * inv)));
          }
        }
        const auto ref = matmul_f64(x, w, M, N, K);
        auto d_res = upload(res);
        auto d_delta = upload(to_bf16(delta)), d_gamma = upload(to_bf16(gamma));
        auto d_w = upload(to_bf16(w));
        DeviceBuffer<float> res_out(res.size());
        DeviceBuffer<bf16> y(ref.size()), xb(res.size()), y2(ref.size());
        poison(res_out);
        poison(y);
        poison(y2);
        GemvNorm nm;
        nm.delta = with_delta ? d_delta.get() : nullptr;
        nm.residual = d_res.get();
        nm.residual_out = res_out.get();
        nm.gamma = d_gamma.get();
        nm.eps = eps;
        ASSERT_TRUE(gemm.run_norm_gemv(nm, d_w.get(), y.get(), false, M, N, K, nullptr));
        const std::string what = "M=" + std::to_string(M) + " N=" + std::to_string(N) +
                                 " K=" + std::to_string(K) + (with_delta ? " with delta" : " plain");
        EXPECT_EQ(download(res_out, h.size()), h) << what;
        const auto got = from_bf16(download(y, ref.size()));
        EXPECT_LT(max_rel_error(got, ref), 1e-2) << what;
        // fp32 out: the normalised rows match the reference except for a rare bf16 rounding flip
        // (rsqrtf against a float64 inverse), so even a 0.01% scale error of the norm shows.
        DeviceBuffer<float> yf(ref.size());
        poison(yf);
        ASSERT_EQ(launch_gemv_norm(nm, d_w.get(), yf.get(), true, M, N, K, sms, nullptr), cudaSuccess);
        EXPECT_LT(max_rel_error(download(yf, ref.size()), ref), 1e-4) << what << ", fp32 out";
        // The two-kernel path, from the same description of the norm.
        AddRmsNormParams p;
        p.norm = nm;
        p.out = xb.get();
        p.rows = M;
        p.dim = K;
        ASSERT_EQ(launch_add_rms_norm(p, nullptr), cudaSuccess);
        gemm.run(xb.get(), d_w.get(), y2.get(), false, M, N, K, nullptr);
        const auto two = from_bf16(download(y2, ref.size()));
        EXPECT_LT(max_rel_error(got, std::vector<double>(two.begin(), two.end())), 1e-2) << what;
      }
    }
  }
  // Rows beyond the GEMV (M > 2) are refused: the caller runs the norm kernel and the GEMM.
  DeviceBuffer<float> r(16 * 64);
  DeviceBuffer<bf16> g(64), wv(64 * 64), out(16 * 64);
  GemvNorm nm;
  nm.residual = r.get();
  nm.gamma = g.get();
  EXPECT_FALSE(gemm.run_norm_gemv(nm, wv.get(), out.get(), false, 3, 64, 64, nullptr));
}

// The final norm + lm_head of small batches: the norm GEMV gathering its rows (row_index) gives
// the same logits as the same GEMV on those rows laid out contiguously, and its greedy argmax is
// the sampler's rule applied to those logits: the lowest id among equal maxima, NaN skipped, -1
// when every logit is NaN. Run twice per shape, so the block counter must have been left at zero.
TEST(CudaGemv, NormGemvGathersRowsAndTakesTheGreedyArgmax) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(41);
  Gemm gemm;
  const int sms = gemm.sm_count();
  const int src_rows = 5;
  DeviceBuffer<float> part_v(gemv_argmax_parts(kGemvMaxM, sms));
  DeviceBuffer<std::int32_t> part_i(part_v.size()), ids(kGemvMaxM);
  DeviceBuffer<unsigned> counter(1);
  CUDA_TRY(cudaMemset(counter.get(), 0, counter.bytes()));
  const GemvArgmax am{part_v.get(), part_i.get(), counter.get(), ids.get()};
  struct Case {
    int n, k;
    std::vector<std::int32_t> rows;
  };
  // K <= 1024 takes the two-columns-per-warp loop, K > 1024 the one-column loop (lm_head of
  // larger models).
  for (const Case& c : {Case{151936, 1024, {3}}, Case{151936, 1024, {4, 1}}, Case{1001, 136, {0, 0}},
                        Case{40, 64, {2}}, Case{20000, 2048, {1}}, Case{5000, 4096, {0, 2}}}) {
    const int M = static_cast<int>(c.rows.size()), N = c.n, K = c.k;
    for (int rep = 0; rep < 2; ++rep) {
      auto res = random_vec(rng, static_cast<std::size_t>(src_rows) * K, -4.0f, 4.0f, false);
      auto delta = random_vec(rng, res.size(), -2.0f, 2.0f);
      auto gamma = random_vec(rng, K, 0.5f, 1.5f);
      auto w = random_vec(rng, static_cast<std::size_t>(N) * K);
      // A tie at the top for row 0 of the first repetition: three equal rows of w, the largest
      // dot product by far (w = sign of the normalised row 0, which the gamma > 0 keeps).
      const std::size_t r0 = static_cast<std::size_t>(c.rows[0]) * K;
      const int tie[3] = {N / 2, 7 % N, N - 3};
      if (rep == 0) {
        for (const int t : tie) {
          for (int k = 0; k < K; ++k) w[static_cast<std::size_t>(t) * K + k] = res[r0 + k] + delta[r0 + k] >= 0 ? 1.0f : -1.0f;
        }
      } else {
        // A NaN logit (one NaN weight in column N / 3) is skipped, not taken.
        w[static_cast<std::size_t>(N / 3) * K] = NAN;
      }
      auto d_res = upload(res);
      auto d_rows = upload(c.rows);
      auto d_delta = upload(to_bf16(delta)), d_gamma = upload(to_bf16(gamma)), d_w = upload(to_bf16(w));
      std::vector<float> res_g, delta_g;  // the gathered rows, contiguous
      for (const int r : c.rows) {
        res_g.insert(res_g.end(), res.begin() + static_cast<std::size_t>(r) * K, res.begin() + static_cast<std::size_t>(r + 1) * K);
        delta_g.insert(delta_g.end(), delta.begin() + static_cast<std::size_t>(r) * K,
                       delta.begin() + static_cast<std::size_t>(r + 1) * K);
      }
      auto d_res_g = upload(res_g);
      auto d_delta_g = upload(to_bf16(delta_g));
      DeviceBuffer<float> y(static_cast<std::size_t>(M) * N), y_ref(y.size());
      poison(y);
      poison(y_ref);
      poison(ids);
      GemvNorm nm;
      nm.delta = d_delta.get();
      nm.residual = d_res.get();
      nm.gamma = d_gamma.get();
      nm.row_index = d_rows.get();
      nm.src_rows = src_rows;
      ASSERT_TRUE(gemm.run_norm_gemv(nm, d_w.get(), y.get(), true, M, N, K, nullptr, &am));
      GemvNorm plain;
      plain.delta = d_delta_g.get();
      plain.residual = d_res_g.get();
      plain.gamma = d_gamma.get();
      ASSERT_TRUE(gemm.run_norm_gemv(plain, d_w.get(), y_ref.get(), true, M, N, K, nullptr));
      const auto got = download(y, y.size());
      const std::string what = "N=" + std::to_string(N) + " K=" + std::to_string(K) + " M=" +
                               std::to_string(M) + " rep " + std::to_string(rep);
      const auto ref = download(y_ref, y.size());
      EXPECT_EQ(std::memcmp(got.data(), ref.data(), got.size() * sizeof(float)), 0) << what;
      const auto want = greedy_ids(got, M, N);
      EXPECT_EQ(download(ids, M), want) << what;
      if (rep == 0 && N > 100) EXPECT_EQ(want[0], 7) << what << ": the tie goes to the lowest id";
    }
  }
  // Every logit NaN (gamma NaN): no token, -1.
  const int K = 64, N = 300;
  auto d_res = upload(random_vec(rng, K));
  auto d_w = upload(to_bf16(random_vec(rng, static_cast<std::size_t>(N) * K)));
  auto d_gamma = upload(to_bf16(std::vector<float>(K, NAN)));
  DeviceBuffer<float> y(N);
  GemvNorm nm;
  nm.residual = d_res.get();
  nm.gamma = d_gamma.get();
  ASSERT_TRUE(gemm.run_norm_gemv(nm, d_w.get(), y.get(), true, 1, N, K, nullptr, &am));
  EXPECT_EQ(download(ids, 1), std::vector<std::int32_t>{-1});
  // The argmax needs fp32 logits; gathering needs the source row count and no new residual.
  DeviceBuffer<bf16> yb(N);
  EXPECT_FALSE(gemm.run_norm_gemv(nm, d_w.get(), yb.get(), false, 1, N, K, nullptr, &am));
  GemvNorm gathered = nm;
  DeviceBuffer<std::int32_t> rows(1);
  gathered.row_index = rows.get();
  EXPECT_FALSE(gemm.run_norm_gemv(gathered, d_w.get(), y.get(), true, 1, N, K, nullptr));  // src_rows 0
  gathered.src_rows = 1;
  DeviceBuffer<float> res_out(K);
  gathered.residual_out = res_out.get();
  EXPECT_FALSE(gemm.run_norm_gemv(gathered, d_w.get(), y.get(), true, 1, N, K, nullptr));
}

// Host-side (runs without a GPU): the fused norm GEMV refuses a call whose outputs overlap what
// every block reads, so a caller cannot pass, say, the addend as the output.
TEST(CudaGemv, NormGemvRefusesOutputsOverlappingItsInputs) {
  alignas(16) static unsigned char arena[1 << 15];
  const auto f32 = [](std::size_t off) { return reinterpret_cast<float*>(arena + off); };
  const auto b16 = [](std::size_t off) { return reinterpret_cast<bf16*>(arena + off); };
  const int M = 2, N = 64, K = 128;  // residual rows 1 KB, delta rows 512 B, y 256 B (bf16)
  GemvNorm nm;
  nm.residual = f32(0);
  nm.residual_out = f32(4096);
  nm.delta = b16(8192);
  nm.gamma = b16(12288);
  const bf16* w = b16(16384);
  EXPECT_TRUE(gemv_norm_supported(nm, w, arena + 20480, false, M, N, K));
  EXPECT_FALSE(gemv_norm_supported(nm, w, nm.delta, false, M, N, K));    // y is the addend
  EXPECT_FALSE(gemv_norm_supported(nm, w, arena + 512, false, M, N, K));  // y inside the residual
  // y ending where delta starts: bf16 fits, fp32 (twice the bytes) runs into it.
  EXPECT_TRUE(gemv_norm_supported(nm, w, arena + 8192 - 256, false, M, N, K));
  EXPECT_FALSE(gemv_norm_supported(nm, w, arena + 8192 - 256, true, M, N, K));
  GemvNorm in_place = nm;
  in_place.residual_out = f32(0);  // the other blocks still read the old residual
  EXPECT_FALSE(gemv_norm_supported(in_place, w, arena + 20480, false, M, N, K));
  GemvNorm onto_delta = nm;
  onto_delta.residual_out = f32(8192 - 512);  // 1 KB from here runs into delta
  EXPECT_FALSE(gemv_norm_supported(onto_delta, w, arena + 20480, false, M, N, K));
  GemvNorm plain = nm;  // no addend, no new residual: only the residual is read
  plain.delta = nullptr;
  plain.residual_out = nullptr;
  EXPECT_TRUE(gemv_norm_supported(plain, w, arena + 8192, false, M, N, K));
  EXPECT_FALSE(gemv_norm_supported(plain, w, arena + 1000, false, M, N, K));
}

}  // namespace
}  // namespace cascade::cuda::test
