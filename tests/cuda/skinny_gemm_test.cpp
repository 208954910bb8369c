// The tensor-core skinny GEMM (3 <= M <= 64, sm_90a) against a float64 CPU product: decode-batch
// M values, Qwen3-0.6B layer shapes and lm_head, ragged N and K (partial w tiles, partial 64-column
// chunks), every split count 1-8, bf16 and fp32 outputs, poisoned outputs and rows past M left
// alone, run-to-run bit equality (the split-K sum has a fixed order), x from the previous kernel
// of a stream (the PDL wait), and Gemm::run's routing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
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
