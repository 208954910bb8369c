// The tensor-core skinny GEMM (3 <= M <= 64, sm_90a) against a float64 CPU product: decode-batch
// M values, Qwen3-0.6B layer shapes and lm_head, ragged N and K (partial w tiles, partial 64-column
// chunks), every split count 1-8, bf16 and fp32 outputs, poisoned outputs and rows past M left
// alone, run-to-run bit equality (the split-K sum has a fixed order), x from the previous kernel
// of a stream (the PDL wait), Gemm::run's routing, and the greedy argmax form.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/gemm.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/skinny_gemm.h"
#include "cuda_test_util.h"

namespace cascade::cuda::test {
namespace {

bool skinny_switched_off() { return ab_switch_on("CASCADE_GEMM_NO_SKINNY"); }

// Tests that go through Gemm need its skinny path on (they would test cuBLASLt otherwise).
#define SKIP_WITHOUT_SKINNY()                                                              \
  do {                                                                                     \
    SKIP_WITHOUT_GPU();                                                                    \
    if (!skinny_gemm_available()) GTEST_SKIP() << "no sm_90a device for the skinny GEMM";  \
    if (skinny_switched_off()) GTEST_SKIP() << "CASCADE_GEMM_NO_SKINNY=1";                 \
  } while (0)

struct Shape {
  int n, k;
};

// Gemm::run with bf16 and fp32 outputs against float64; one spare poisoned row after y must stay
// poisoned (no writes past row M - 1).
void check_run(Gemm& gemm, std::mt19937_64& rng, int M, Shape s) {
  auto x = random_vec(rng, static_cast<std::size_t>(M) * s.k);
  auto w = random_vec(rng, static_cast<std::size_t>(s.n) * s.k);
  auto d_x = upload(to_bf16(x)), d_w = upload(to_bf16(w));
  ASSERT_TRUE(skinny_gemm_supported(d_x.get(), d_w.get(), M, s.n, s.k));
  const auto ref = matmul_f64(x, w, M, s.n, s.k);
  const std::size_t total = ref.size() + s.n;
  DeviceBuffer<bf16> yb(total);
  DeviceBuffer<float> yf(total);
  poison(yb);
  poison(yf);
  gemm.run(d_x.get(), d_w.get(), yb.get(), false, M, s.n, s.k, nullptr);
  gemm.run(d_x.get(), d_w.get(), yf.get(), true, M, s.n, s.k, nullptr);
  auto got_b = from_bf16(download(yb, total));
  auto got_f = download(yf, total);
  for (std::size_t i = ref.size(); i < total; ++i) {
    ASSERT_TRUE(std::isnan(got_b[i]) && std::isnan(got_f[i])) << "write past row M-1 at " << i;
  }
  got_b.resize(ref.size());
  got_f.resize(ref.size());
  EXPECT_LT(rel_error(got_b, ref), 1e-2) << "bf16 out, M=" << M << " N=" << s.n << " K=" << s.k;
  EXPECT_LT(max_rel_error(got_b, ref), 1e-2) << "bf16 out, M=" << M << " N=" << s.n << " K=" << s.k;
  EXPECT_LT(rel_error(got_f, ref), 1e-5) << "fp32 out, M=" << M << " N=" << s.n << " K=" << s.k;
  EXPECT_LT(max_rel_error(got_f, ref), 1e-5) << "fp32 out, M=" << M << " N=" << s.n << " K=" << s.k;
}

// SkinnyFusion of a residual epilogue.
SkinnyFusion residual_fusion(const float* residual, float* residual_out, const bf16* gamma, bf16* x_out,
                             float* ssq_out) {
  SkinnyFusion f;
  f.residual = residual;
  f.residual_out = residual_out;
  f.gamma = gamma;
  f.x_out = x_out;
  f.ssq_out = ssq_out;
  return f;
}

// The residual epilogue's sums of squares in float64 from the h [M, N] it wrote: per 64-column
// tile and row, laid out [tile][row] as ssq_out.
std::vector<double> tile_squares_ref(const std::vector<float>& h, int M, int N) {
  std::vector<double> ssq(static_cast<std::size_t>((N + 63) / 64) * M, 0.0);
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      const double v = h[static_cast<std::size_t>(m) * N + n];
      ssq[static_cast<std::size_t>(n / 64) * M + m] += v * v;
    }
  }
  return ssq;
}

// SkinnyFusion of a folded norm (gated: with the SiLU form).
SkinnyFusion norm_fusion(const float* ssq, int ssq_tiles, float eps, bool gated) {
  SkinnyFusion f;
  f.ssq_in = ssq;
  f.ssq_tiles = ssq_tiles;
  f.eps = eps;
  f.gated = gated;
  return f;
}

// A folded-norm GEMM's output in float64 from the plain product prod [M, w_rows]: row m scaled by
// rsqrt(sum of its ssq tiles / K + eps); gated (w_rows = 2N): silu(g) * u of the scaled gate and
// up columns, each rounded to bf16 first as the kernel takes them.
std::vector<double> folded_ref(const std::vector<double>& prod, const std::vector<float>& ssq, int ssq_tiles,
                               int M, int N, int K, float eps, bool gated) {
  const int w_rows = gated ? 2 * N : N;
  std::vector<double> ref(static_cast<std::size_t>(M) * N);
  for (int m = 0; m < M; ++m) {
    double ss = 0.0;
    for (int t = 0; t < ssq_tiles; ++t) ss += ssq[static_cast<std::size_t>(t) * M + m];
    const double r = 1.0 / std::sqrt(ss / K + eps);
    for (int n = 0; n < N; ++n) {
      const double a = prod[static_cast<std::size_t>(m) * w_rows + n] * r;
      if (gated) {
        const double g = round_bf16(static_cast<float>(a));
        const double u = round_bf16(static_cast<float>(prod[static_cast<std::size_t>(m) * w_rows + N + n] * r));
        ref[static_cast<std::size_t>(m) * N + n] = g / (1.0 + std::exp(-g)) * u;
      } else {
        ref[static_cast<std::size_t>(m) * N + n] = a;
      }
    }
  }
  return ref;
}

TEST(CudaSkinnyGemm, AvailableOnSm90) {
  SKIP_WITHOUT_GPU();
  // The repository builds sm_90a code (CASCADE_CUDA_ARCHS): on an H100/H200 it must be what runs;
  // elsewhere the path is off and a direct launch is refused rather than doing nothing.
  EXPECT_EQ(skinny_gemm_available(), device_is_sm90());
  Gemm gemm;
  EXPECT_EQ(gemm.skinny_enabled(), skinny_gemm_available() && !skinny_switched_off());
  if (!skinny_gemm_available()) {
    DeviceBuffer<bf16> x(64 * 64), w(64 * 64), y(64 * 64);
    EXPECT_EQ(launch_skinny_gemm(x.get(), w.get(), y.get(), false, 8, 64, 64, 1, nullptr),
              cudaErrorNotSupported);
  }
}

TEST(CudaSkinnyGemm, DecodeBatchesMatchFloat64) {
  SKIP_WITHOUT_SKINNY();
  std::mt19937_64 rng(41);
  Gemm gemm;
  ASSERT_TRUE(gemm.skinny_enabled());
  // qkv, o_proj, gate_up, down of Qwen3-0.6B (split-K), plus ragged N (partial 64-row tiles)
  // and K (partial 64-column chunks, K below one chunk).
  const Shape shapes[] = {{4096, 1024}, {1024, 2048}, {6144, 1024}, {1024, 3072},
                          {1000, 1032}, {77, 520},    {130, 8},     {3001, 200}};
  for (int M : {3, 8, 9, 16, 33, 64}) {
    for (Shape s : shapes) check_run(gemm, rng, M, s);
  }
}

TEST(CudaSkinnyGemm, EveryMFrom3To64) {
  SKIP_WITHOUT_SKINNY();
  std::mt19937_64 rng(42);
  Gemm gemm;
  for (int M = kSkinnyMinM; M <= kSkinnyMaxM; ++M) check_run(gemm, rng, M, {384, 328});
}

TEST(CudaSkinnyGemm, LmHeadShapeWithoutSplit) {
  SKIP_WITHOUT_SKINNY();
  std::mt19937_64 rng(43);
  Gemm gemm;
  check_run(gemm, rng, 64, {151936, 1024});  // 1187 tiles: one CTA per tile over all of K
  check_run(gemm, rng, 5, {40000, 4096});    // 64 chunks through the four-stage ring
}

// Direct launches with one split and with split-K (8-CTA clusters adding their partial tiles) agree
// to fp32 rounding, and a split launch repeated gives the same bits (ranks are added in order).
TEST(CudaSkinnyGemm, SplitKIsDeterministicAndAgreesWithOneSplit) {
  SKIP_WITHOUT_SKINNY();
  std::mt19937_64 rng(44);
  for (const int M : {48, 5}) {
    const int N = 1000, K = 3072;  // 16 tiles (the last partial), 48 chunks: 8 splits of 6
    auto x = random_vec(rng, static_cast<std::size_t>(M) * K);
    auto w = random_vec(rng, static_cast<std::size_t>(N) * K);
    auto d_x = upload(to_bf16(x)), d_w = upload(to_bf16(w));
    DeviceBuffer<float> one(M * N), split_a(M * N), split_b(M * N);
    poison(one);
    poison(split_a);
    poison(split_b);
    CUDA_TRY(launch_skinny_gemm(d_x.get(), d_w.get(), one.get(), true, M, N, K, 1, nullptr));
    CUDA_TRY(launch_skinny_gemm(d_x.get(), d_w.get(), split_a.get(), true, M, N, K, 1000, nullptr));
    CUDA_TRY(launch_skinny_gemm(d_x.get(), d_w.get(), split_b.get(), true, M, N, K, 1000, nullptr));
    const auto a = download(one, M * N), b = download(split_a, M * N), c = download(split_b, M * N);
    const auto ref = matmul_f64(x, w, M, N, K);
    EXPECT_LT(max_rel_error(a, ref), 1e-5) << "M=" << M;
    EXPECT_LT(max_rel_error(b, ref), 1e-5) << "M=" << M;
    EXPECT_EQ(std::memcmp(b.data(), c.data(), b.size() * sizeof(float)), 0) << "M=" << M;
    EXPECT_NE(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
        << "one split and eight summed in the same order: the split path did not run";
  }
}

// Every split count a cluster can have (1-8), each with a partial last chunk, a partial last
// tile, bf16 and fp32 out: K = 128 * S - 8 is 2S chunks, two per split.
TEST(CudaSkinnyGemm, EverySplitCountFrom1To8) {
  SKIP_WITHOUT_GPU();
  if (!skinny_gemm_available()) GTEST_SKIP() << "no sm_90a device for the skinny GEMM";
  std::mt19937_64 rng(47);
  const int M = 19, N = 130, tiles = 3;
  for (int S = 1; S <= 8; ++S) {
    const int K = 128 * S - 8;
    auto x = random_vec(rng, static_cast<std::size_t>(M) * K);
    auto w = random_vec(rng, static_cast<std::size_t>(N) * K);
    auto d_x = upload(to_bf16(x)), d_w = upload(to_bf16(w));
    const auto ref = matmul_f64(x, w, M, N, K);
    DeviceBuffer<bf16> yb(ref.size());
    DeviceBuffer<float> yf(ref.size());
    poison(yb);
    poison(yf);
    CUDA_TRY(launch_skinny_gemm(d_x.get(), d_w.get(), yb.get(), false, M, N, K, tiles * S, nullptr));
    CUDA_TRY(launch_skinny_gemm(d_x.get(), d_w.get(), yf.get(), true, M, N, K, tiles * S, nullptr));
    EXPECT_LT(max_rel_error(from_bf16(download(yb, ref.size())), ref), 1e-2) << "splits " << S;
    EXPECT_LT(max_rel_error(download(yf, ref.size()), ref), 1e-5) << "splits " << S;
  }
}

// x written by the previous kernel on the same stream (PDL lets the GEMM start while it runs):
// the GEMM must read x only after its wait. silu_mul writes x over a poisoned buffer.
TEST(CudaSkinnyGemm, ReadsXOnlyAfterThePreviousKernel) {
  SKIP_WITHOUT_SKINNY();
  std::mt19937_64 rng(48);
  Gemm gemm;
  const int M = 64, N = 1024, K = 3072;
  auto gu = to_bf16(random_vec(rng, static_cast<std::size_t>(M) * 2 * K, -3.0f, 3.0f));
  const auto act = silu_mul_ref(from_bf16(gu), M, K);
  auto w = random_vec(rng, static_cast<std::size_t>(N) * K);
  const auto ref = matmul_f64(act, w, M, N, K);
  auto d_gu = upload(gu), d_w = upload(to_bf16(w));
  DeviceBuffer<bf16> x(static_cast<std::size_t>(M) * K), y(ref.size());
  cudaStream_t stream = nullptr;
  CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int round = 0; round < 3; ++round) {
    poison(x);
    poison(y);
    CUDA_TRY(cudaDeviceSynchronize());
    ASSERT_EQ(launch_silu_mul({d_gu.get(), x.get(), M, K}, stream), cudaSuccess);
    gemm.run(x.get(), d_w.get(), y.get(), false, M, N, K, stream);
    CUDA_TRY(cudaStreamSynchronize(stream));
    EXPECT_LT(max_rel_error(from_bf16(download(y, ref.size())), ref), 1e-2) << "round " << round;
  }
  CUDA_TRY(cudaStreamDestroy(stream));
}

TEST(CudaSkinnyGemm, AgreesWithCublasLt) {
  SKIP_WITHOUT_SKINNY();
  std::mt19937_64 rng(45);
  Gemm gemm;
  EXPECT_LT(run_vs_cublaslt(gemm, rng, 64, 6144, 1024), 1e-5);
}

// SkinnyFusion's residual epilogue: h = residual + bf16(x · wᵀ) into residual_out, bf16(h * gamma)
// into x_out (bit for bit from the h it wrote), each 64-column tile's sum of h² per row into
// ssq_out (against float64 sums of the h it wrote), with and without split-K, out of place and in
// place, a ragged last tile, and nothing written past row M - 1.
TEST(CudaSkinnyGemm, ResidualEpilogueAddsAndSumsSquares) {
  SKIP_WITHOUT_SKINNY();
  std::mt19937_64 rng(51);
  const int N = 1000, K = 2048, tiles = (N + 63) / 64;
  for (const int M : {64, 7}) {
    for (const int target : {1, 1000}) {
      for (const bool in_place : {false, true}) {
        auto x = random_vec(rng, static_cast<std::size_t>(M) * K);
        auto w = random_vec(rng, static_cast<std::size_t>(N) * K);
        auto res = random_vec(rng, static_cast<std::size_t>(M) * N, -4.0f, 4.0f);
        auto gamma = to_bf16(random_vec(rng, N, 0.5f, 1.5f));
        auto d_x = upload(to_bf16(x)), d_w = upload(to_bf16(w)), d_gamma = upload(gamma);
        const std::size_t total = static_cast<std::size_t>(M + 1) * N;
        res.resize(total, NAN);
        auto d_res = upload(res);
        DeviceBuffer<float> d_res_out(total), d_ssq(static_cast<std::size_t>(tiles + 1) * M);
        DeviceBuffer<bf16> d_xo(total);
        poison(d_res_out);
        poison(d_ssq);
        poison(d_xo);
        const SkinnyFusion f = residual_fusion(d_res.get(), in_place ? d_res.get() : d_res_out.get(),
                                               d_gamma.get(), d_xo.get(), d_ssq.get());
        ASSERT_EQ(launch_skinny_gemm_fused(d_x.get(), d_w.get(), nullptr, M, N, K, f, target, nullptr),
                  cudaSuccess);
        const std::string what = "M=" + std::to_string(M) + " target " + std::to_string(target) +
                                 (in_place ? " in place" : "");
        const auto y = matmul_f64(x, w, M, N, K);
        const auto h = download(in_place ? d_res : d_res_out, total);
        const auto xo = from_bf16(download(d_xo, total));
        const auto ssq = download(d_ssq, static_cast<std::size_t>(tiles + 1) * M);
        std::vector<double> h_ref(y.size());
        for (std::size_t i = 0; i < y.size(); ++i) h_ref[i] = res[i] + y[i];
        EXPECT_LT(max_rel_error(std::vector<float>(h.begin(), h.begin() + y.size()), h_ref), 1e-2) << what;
        for (std::size_t i = y.size(); i < total; ++i) {
          ASSERT_TRUE(std::isnan(h[i]) && std::isnan(xo[i])) << "write past row M-1 at " << i << ", " << what;
        }
        int x_mismatch = 0;
        for (int m = 0; m < M; ++m) {
          for (int n = 0; n < N; ++n) {
            const std::size_t i = static_cast<std::size_t>(m) * N + n;
            x_mismatch += xo[i] != round_bf16(h[i] * __bfloat162float(gamma[n]));
          }
        }
        EXPECT_EQ(x_mismatch, 0) << what;
        const auto ssq_ref = tile_squares_ref(h, M, N);
        EXPECT_LT(max_rel_error(std::vector<float>(ssq.begin(), ssq.begin() + ssq_ref.size()), ssq_ref), 1e-5)
            << what;
        for (std::size_t i = ssq_ref.size(); i < ssq.size(); ++i) {
          ASSERT_TRUE(std::isnan(ssq[i])) << "ssq written past its tiles, " << what;
        }
      }
    }
  }
}

// The per-row scale of a folded RMSNorm: r = rsqrt(sum of ssq_in / K + eps); the folded GEMM's
// rows against r · (x · wᵀ) in float64, and the gated form (w = [gate; up], y = silu(g) * u with
// g and u rounded to bf16) against float64, for M = 3 and 64, with and without split-K, an N
// that ends mid-tile (gated: 32 columns a tile) and a poisoned spare row left alone.
TEST(CudaSkinnyGemm, FoldedNormAndGatedSiluMatchFloat64) {
  SKIP_WITHOUT_SKINNY();
  std::mt19937_64 rng(52);
  const int K = 1024;
  const float eps = 1e-6f;
  for (const int M : {3, 64}) {
    for (const int target : {1, 1000}) {
      for (const bool gated : {false, true}) {
        // 16 tiles of sums (a hidden size of 1024: all loaded ahead of the main loop), or 40
        // (the rest loaded after it).
        const int ssq_tiles = gated == (target == 1) ? 16 : 40;
        const int N = gated ? 1000 : 1090;
        const int w_rows = gated ? 2 * N : N;
        auto x = to_bf16(random_vec(rng, static_cast<std::size_t>(M) * K));
        auto w = random_vec(rng, static_cast<std::size_t>(w_rows) * K);
        auto ssq = random_vec(rng, static_cast<std::size_t>(ssq_tiles) * M, 0.5f, 40.0f);
        auto d_x = upload(x), d_w = upload(to_bf16(w));
        auto d_ssq = upload(ssq);
        const std::size_t total = static_cast<std::size_t>(M + 1) * N;
        DeviceBuffer<bf16> y(total);
        poison(y);
        const SkinnyFusion f = norm_fusion(d_ssq.get(), ssq_tiles, eps, gated);
        ASSERT_EQ(launch_skinny_gemm_fused(d_x.get(), d_w.get(), y.get(), M, N, K, f, target, nullptr),
                  cudaSuccess);
        const auto ref = folded_ref(matmul_f64(from_bf16(x), w, M, w_rows, K), ssq, ssq_tiles, M, N, K, eps, gated);
        const auto got = from_bf16(download(y, total));
        for (std::size_t i = ref.size(); i < total; ++i) {
          ASSERT_TRUE(std::isnan(got[i])) << "write past row M-1 at " << i;
        }
        EXPECT_LT(max_rel_error(std::vector<float>(got.begin(), got.begin() + ref.size()), ref), 1e-2)
            << "M=" << M << " target " << target << (gated ? " gated" : "") << " tiles " << ssq_tiles;
      }
    }
  }
}

// The residual epilogue's outputs feeding a folded-norm GEMM are RMSNorm(h) · wᵀ (float64 from the
// h the epilogue wrote): 37 rows, a hidden size of 2048 (32 tiles of sums, more than are loaded
// ahead of the main loop), the plain and the gated consumer.
TEST(CudaSkinnyGemm, ResidualThenFoldedNormIsRmsNormThenGemm) {
  SKIP_WITHOUT_SKINNY();
  std::mt19937_64 rng(53);
  const int M = 37, E = 2048, Kp = 512, tiles = E / 64;
  const float eps = 1e-6f;
  auto x = random_vec(rng, static_cast<std::size_t>(M) * Kp);
  auto wp = random_vec(rng, static_cast<std::size_t>(E) * Kp);
  auto res = random_vec(rng, static_cast<std::size_t>(M) * E, -2.0f, 2.0f);
  auto gamma = to_bf16(random_vec(rng, E, 0.5f, 1.5f));
  auto d_x = upload(to_bf16(x)), d_wp = upload(to_bf16(wp)), d_gamma = upload(gamma);
  auto d_res = upload(res);
  DeviceBuffer<float> d_h(static_cast<std::size_t>(M) * E), d_ssq(static_cast<std::size_t>(tiles) * M);
  DeviceBuffer<bf16> d_xo(static_cast<std::size_t>(M) * E);
  const SkinnyFusion prod = residual_fusion(d_res.get(), d_h.get(), d_gamma.get(), d_xo.get(), d_ssq.get());
  ASSERT_EQ(launch_skinny_gemm_fused(d_x.get(), d_wp.get(), nullptr, M, E, Kp, prod, 264, nullptr), cudaSuccess);
  const auto h = download(d_h, static_cast<std::size_t>(M) * E);
  std::vector<double> normed(h.size());  // RMSNorm(h) in float64
  for (int m = 0; m < M; ++m) {
    double ss = 0.0;
    for (int k = 0; k < E; ++k) ss += static_cast<double>(h[m * E + k]) * h[m * E + k];
    const double r = 1.0 / std::sqrt(ss / E + eps);
    for (int k = 0; k < E; ++k) normed[m * E + k] = h[m * E + k] * r * __bfloat162float(gamma[k]);
  }
  for (const bool gated : {false, true}) {
    const int N = 300, w_rows = gated ? 2 * N : N;
    auto wc = random_vec(rng, static_cast<std::size_t>(w_rows) * E);
    auto d_wc = upload(to_bf16(wc));
    DeviceBuffer<bf16> y(static_cast<std::size_t>(M) * N);
    poison(y);
    const SkinnyFusion cons = norm_fusion(d_ssq.get(), tiles, eps, gated);
    ASSERT_EQ(launch_skinny_gemm_fused(d_xo.get(), d_wc.get(), y.get(), M, N, E, cons, 264, nullptr), cudaSuccess);
    std::vector<double> ref(static_cast<std::size_t>(M) * N);
    for (int m = 0; m < M; ++m) {
      for (int n = 0; n < N; ++n) {
        const auto dot = [&](int row) {
          double acc = 0.0;
          for (int k = 0; k < E; ++k) acc += normed[m * E + k] * wc[static_cast<std::size_t>(row) * E + k];
          return acc;
        };
        const double a = dot(n);
        ref[static_cast<std::size_t>(m) * N + n] = gated ? a / (1.0 + std::exp(-a)) * dot(N + n) : a;
      }
    }
    EXPECT_LT(max_rel_error(from_bf16(download(y, ref.size())), ref), 2e-2) << (gated ? "gated" : "plain");
  }
}

// Every split count a cluster can have (1-8, so also counts that do not divide the tile's eight
// row groups) for the three fused forms, each launched twice: the same bits both times, and
// against float64 (M 19, a ragged last tile; K = 128 * S - 8, two chunks a split).
TEST(CudaSkinnyGemm, FusedFormsEverySplitCountBitForBit) {
  SKIP_WITHOUT_SKINNY();
  std::mt19937_64 rng(54);
  const int M = 19;
  for (int S = 1; S <= 8; ++S) {
    const int K = 128 * S - 8;
    auto x = random_vec(rng, static_cast<std::size_t>(M) * K);
    auto d_x = upload(to_bf16(x));
    {  // residual epilogue, N = 130: 3 tiles
      const int N = 130, tiles = 3;
      auto w = random_vec(rng, static_cast<std::size_t>(N) * K);
      auto res = random_vec(rng, static_cast<std::size_t>(M) * N);
      auto gamma = to_bf16(random_vec(rng, N, 0.5f, 1.5f));
      auto d_w = upload(to_bf16(w)), d_gamma = upload(gamma);
      auto d_res = upload(res);
      std::vector<float> first_h, first_ssq;
      for (int round = 0; round < 2; ++round) {
        DeviceBuffer<float> d_h(static_cast<std::size_t>(M) * N), d_ssq(static_cast<std::size_t>(tiles) * M);
        DeviceBuffer<bf16> d_xo(static_cast<std::size_t>(M) * N);
        poison(d_h);
        poison(d_ssq);
        const SkinnyFusion f = residual_fusion(d_res.get(), d_h.get(), d_gamma.get(), d_xo.get(), d_ssq.get());
        ASSERT_EQ(launch_skinny_gemm_fused(d_x.get(), d_w.get(), nullptr, M, N, K, f, tiles * S, nullptr),
                  cudaSuccess);
        auto h = download(d_h, static_cast<std::size_t>(M) * N);
        auto ssq = download(d_ssq, static_cast<std::size_t>(tiles) * M);
        if (round == 0) {
          const auto y = matmul_f64(x, w, M, N, K);
          std::vector<double> h_ref(y.size());
          for (std::size_t i = 0; i < y.size(); ++i) h_ref[i] = res[i] + y[i];
          const auto ssq_ref = tile_squares_ref(h, M, N);
          EXPECT_LT(max_rel_error(h, h_ref), 1e-2) << "residual, splits " << S;
          EXPECT_LT(max_rel_error(ssq, ssq_ref), 1e-5) << "residual, splits " << S;
          first_h = h;
          first_ssq = ssq;
        } else {
          EXPECT_EQ(std::memcmp(h.data(), first_h.data(), h.size() * sizeof(float)), 0) << "splits " << S;
          EXPECT_EQ(std::memcmp(ssq.data(), first_ssq.data(), ssq.size() * sizeof(float)), 0) << "splits " << S;
        }
      }
    }
    for (const bool gated : {false, true}) {  // folded norm: N = 130 (3 tiles) or gated 70 (3 tiles)
      const int N = gated ? 70 : 130, w_rows = gated ? 2 * N : N, tiles = 3, ssq_tiles = 5;
      auto w = random_vec(rng, static_cast<std::size_t>(w_rows) * K);
      auto ssq = random_vec(rng, static_cast<std::size_t>(ssq_tiles) * M, 1.0f, 30.0f);
      auto d_w = upload(to_bf16(w));
      auto d_ssq = upload(ssq);
      const SkinnyFusion f = norm_fusion(d_ssq.get(), ssq_tiles, 1e-6f, gated);
      std::vector<float> first;
      for (int round = 0; round < 2; ++round) {
        DeviceBuffer<bf16> y(static_cast<std::size_t>(M) * N);
        poison(y);
        ASSERT_EQ(launch_skinny_gemm_fused(d_x.get(), d_w.get(), y.get(), M, N, K, f, tiles * S, nullptr),
                  cudaSuccess);
        auto got = from_bf16(download(y, static_cast<std::size_t>(M) * N));
        if (round == 0) {
          const auto ref = folded_ref(matmul_f64(from_bf16(to_bf16(x)), w, M, w_rows, K), ssq, ssq_tiles, M, N,
                                      K, f.eps, gated);
          EXPECT_LT(max_rel_error(got, ref), 1e-2) << (gated ? "gated" : "norm") << ", splits " << S;
          first = got;
        } else {
          EXPECT_EQ(std::memcmp(got.data(), first.data(), got.size() * sizeof(float)), 0)
              << (gated ? "gated" : "norm") << ", splits " << S;
        }
      }
    }
  }
}

// The argmax form (SkinnyArgmax) writes the plain fp32 product bit for bit, and each row's id is
// the sampler's greedy rule on those logits: the lowest id among equal maxima, NaN skipped, -1
// when no logit is > -inf. Shapes: lm_head (2374 tiles), 8- and 3-CTA split-K clusters (3 splits
// cut the eight row groups unevenly), a partial last tile. Rep 0 puts a three-way tie at the top
// of row 0 by far. Rep 1 has lower maxima, a NaN column, a row of NaN, a row whose logits are all
// negative with ties at the top, and a row of -inf (and one NaN), so a wrong order of negative
// keys would show. The keys start at zero (the caller's part); the rows past M must stay so.
TEST(CudaSkinnyGemm, ArgmaxIsTheSamplersGreedyRule) {
  SKIP_WITHOUT_GPU();
  if (!skinny_gemm_available()) GTEST_SKIP() << "no sm_90a device for the skinny GEMM";
  std::mt19937_64 rng(53);
  DeviceBuffer<unsigned long long> keys(kSkinnyMaxM);
  const SkinnyArgmax am{keys.get()};
  struct Case {
    int m, n, k, target_ctas;
  };
  for (const Case& c : {Case{64, 151936, 1024, 264}, Case{5, 1000, 3072, 1000}, Case{37, 130, 1016, 24},
                        Case{19, 130, 1016, 9}, Case{3, 70, 264, 1}}) {
    const int M = c.m, N = c.n, K = c.k;
    for (int rep = 0; rep < 2; ++rep) {
      auto x = random_vec(rng, static_cast<std::size_t>(M) * K);
      auto w = random_vec(rng, static_cast<std::size_t>(N) * K);
      auto x_row = [&](int m) { return x.begin() + static_cast<std::ptrdiff_t>(m) * K; };
      if (rep == 0) {
        for (const int t : {N / 2, 7, N - 3}) {
          for (int k = 0; k < K; ++k) w[static_cast<std::size_t>(t) * K + k] = x[k] >= 0.0f ? 1.0f : -1.0f;
        }
      } else {
        for (int n = 0; n < N; ++n) {
          w[static_cast<std::size_t>(n) * K] = -0.5f - 0.25f * static_cast<float>(n % 7);  // k = 0: <= -0.5
          w[static_cast<std::size_t>(n) * K + 1] = -1e30f;                                 // k = 1
        }
        w[static_cast<std::size_t>(N / 3) * K + 5] = NAN;  // column N / 3: NaN in every row
        x[static_cast<std::size_t>(1) * K + 3] = NAN;      // row 1: every logit NaN
        // Row 2: x = e_0, so its logits are column 0 of w: all negative, the largest (-0.5) at
        // every seventh id; the lowest of them, 0, is the answer.
        std::fill(x_row(2), x_row(3), 0.0f);
        x[static_cast<std::size_t>(2) * K] = 1.0f;
        // Row 3 (where M > 3): 1e30 * -1e30 overflows, so its logits are -inf (NaN at N / 3).
        if (M > 3) {
          std::fill(x_row(3), x_row(4), 0.0f);
          x[static_cast<std::size_t>(3) * K + 1] = 1e30f;
        }
        // The other rows' k = 1 term is then a common shift near -1e30 * x[m][1]: zero it.
        for (int m = 0; m < M; ++m) {
          if (m != 3) x[static_cast<std::size_t>(m) * K + 1] = 0.0f;
        }
      }
      auto d_x = upload(to_bf16(x)), d_w = upload(to_bf16(w));
      DeviceBuffer<float> y(static_cast<std::size_t>(M) * N), y_ref(y.size());
      poison(y);
      poison(y_ref);
      CUDA_TRY(cudaMemset(keys.get(), 0, keys.bytes()));
      CUDA_TRY(launch_skinny_gemm_argmax(d_x.get(), d_w.get(), y.get(), M, N, K, am, c.target_ctas, nullptr));
      CUDA_TRY(launch_skinny_gemm(d_x.get(), d_w.get(), y_ref.get(), true, M, N, K, c.target_ctas, nullptr));
      const std::string what = "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
                               " rep " + std::to_string(rep);
      const auto got = download(y, y.size()), ref = download(y_ref, y.size());
      EXPECT_EQ(std::memcmp(got.data(), ref.data(), got.size() * sizeof(float)), 0) << what;
      const auto want = greedy_ids(got, M, N);
      const auto got_keys = download(keys, kSkinnyMaxM);
      std::vector<std::int32_t> ids(M);
      std::transform(got_keys.begin(), got_keys.begin() + M, ids.begin(), skinny_argmax_id);
      EXPECT_EQ(ids, want) << what;
      EXPECT_EQ(std::vector<unsigned long long>(got_keys.begin() + M, got_keys.end()),
                std::vector<unsigned long long>(kSkinnyMaxM - M, 0ull))
          << what << ": rows past M";
      // Without y (a step with StepBatch::keep_logits false): the same keys, y left as it was.
      poison(y);
      CUDA_TRY(cudaMemset(keys.get(), 0, keys.bytes()));
      CUDA_TRY(launch_skinny_gemm_argmax(d_x.get(), d_w.get(), nullptr, M, N, K, am, c.target_ctas, nullptr));
      EXPECT_EQ(download(keys, kSkinnyMaxM), got_keys) << what << ", no y";
      std::vector<unsigned> y_bits(y.size());
      CUDA_TRY(cudaMemcpy(y_bits.data(), y.get(), y.bytes(), cudaMemcpyDeviceToHost));
      EXPECT_TRUE(std::all_of(y_bits.begin(), y_bits.end(), [](unsigned b) { return b == 0xffffffffu; }))
          << what << ": y written";
      if (rep == 0) {
        EXPECT_EQ(want[0], 7) << what << ": the tie goes to the lowest id";
      } else {
        EXPECT_EQ(want[1], -1) << what << ": a row of NaN logits has no token";
        EXPECT_EQ(want[2], 0) << what << ": the largest of negative logits, lowest id";
        EXPECT_LT(got[static_cast<std::size_t>(2) * N], 0.0f) << what;
        if (M > 3) {
          EXPECT_EQ(got[static_cast<std::size_t>(3) * N], -INFINITY) << what << ": 1e30 * -1e30 in fp32";
          EXPECT_EQ(want[3], -1) << what << ": a row of -inf (and NaN) has no token";
        }
      }
    }
  }
  // Gemm::run_argmax takes the argmax where run() takes the skinny GEMM, and only there.
  if (skinny_switched_off()) return;
  Gemm gemm;
  const int N = 300, K = 64;
  auto d_x = upload(to_bf16(random_vec(rng, static_cast<std::size_t>(65) * K)));
  auto d_w = upload(to_bf16(random_vec(rng, static_cast<std::size_t>(N) * K)));
  DeviceBuffer<float> y(static_cast<std::size_t>(65) * N);
  EXPECT_TRUE(gemm.run_argmax(d_x.get(), d_w.get(), y.get(), 3, N, K, am, nullptr));
  EXPECT_TRUE(gemm.run_argmax(d_x.get(), d_w.get(), y.get(), 64, N, K, am, nullptr));
  EXPECT_FALSE(gemm.run_argmax(d_x.get(), d_w.get(), y.get(), 65, N, K, am, nullptr));  // cuBLASLt
  EXPECT_FALSE(gemm.run_argmax(d_x.get(), d_w.get(), y.get(), 2, N, K, am, nullptr));   // the GEMV
  const SkinnyArgmax incomplete{};
  EXPECT_EQ(launch_skinny_gemm_argmax(d_x.get(), d_w.get(), y.get(), 3, N, K, incomplete, 1, nullptr),
            cudaErrorInvalidValue);
}

// Host side (runs in CI): launch_skinny_gemm_fused refuses a residual epilogue without its outputs
// or combined with the gated form, the folded norm or a y, a product without y, the gated form
// without the folded norm and a folded norm of no tiles, before touching the device.
TEST(CudaSkinnyGemm, FusedLaunchRefusesIncompleteFusions) {
  alignas(16) static bf16 buf[64];
  alignas(16) static float fbuf[64];
  SkinnyFusion f;
  f.residual = fbuf;
  EXPECT_EQ(launch_skinny_gemm_fused(buf, buf, nullptr, 8, 8, 8, f, 1, nullptr), cudaErrorInvalidValue);
  f.residual_out = fbuf;
  f.gamma = buf;
  f.x_out = buf + 8;
  f.ssq_out = fbuf + 8;
  f.gated = true;
  EXPECT_EQ(launch_skinny_gemm_fused(buf, buf, nullptr, 8, 8, 8, f, 1, nullptr), cudaErrorInvalidValue);
  SkinnyFusion none;
  EXPECT_EQ(launch_skinny_gemm_fused(buf, buf, nullptr, 8, 8, 8, none, 1, nullptr), cudaErrorInvalidValue);
  f.gated = false;
  f.ssq_in = fbuf + 16;  // a residual epilogue with a folded norm
  f.ssq_tiles = 1;
  EXPECT_EQ(launch_skinny_gemm_fused(buf, buf, nullptr, 8, 8, 8, f, 1, nullptr), cudaErrorInvalidValue);
  f.ssq_in = nullptr;  // a residual epilogue with a y
  EXPECT_EQ(launch_skinny_gemm_fused(buf, buf, buf + 16, 8, 8, 8, f, 1, nullptr), cudaErrorInvalidValue);
  SkinnyFusion gated_alone;
  gated_alone.gated = true;
  EXPECT_EQ(launch_skinny_gemm_fused(buf, buf, buf + 16, 8, 8, 8, gated_alone, 1, nullptr), cudaErrorInvalidValue);
  SkinnyFusion no_tiles;
  no_tiles.ssq_in = fbuf;
  EXPECT_EQ(launch_skinny_gemm_fused(buf, buf, buf + 16, 8, 8, 8, no_tiles, 1, nullptr), cudaErrorInvalidValue);
}

// Host-side (runs in CI): the shape and alignment rules; only the addresses are looked at.
TEST(CudaSkinnyGemm, RefusesShapesItCannotTake) {
  alignas(16) static bf16 buf[64];
  const bf16* x = buf;
  const bf16* w = buf + 8;
  EXPECT_TRUE(skinny_gemm_supported(x, w, 3, 70, 264));
  EXPECT_TRUE(skinny_gemm_supported(x, w, 64, 70, 264));
  EXPECT_FALSE(skinny_gemm_supported(x, w, 2, 70, 264));   // the GEMV's
  EXPECT_FALSE(skinny_gemm_supported(x, w, 65, 70, 264));  // cuBLASLt's
  EXPECT_FALSE(skinny_gemm_supported(x, w, 8, 70, 260));   // K not a multiple of 8
  EXPECT_FALSE(skinny_gemm_supported(x, w, 8, 0, 264));
  EXPECT_FALSE(skinny_gemm_supported(x + 1, w, 8, 70, 264));  // 2-byte aligned
  EXPECT_FALSE(skinny_gemm_supported(x, w + 4, 8, 70, 264));  // 8-byte aligned
}

}  // namespace
}  // namespace cascade::cuda::test
