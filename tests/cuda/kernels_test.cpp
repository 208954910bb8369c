// Every element-wise CUDA kernel and the cuBLASLt GEMM against the CPU reference ops, on fresh
// random inputs of several shapes, with NaN-poisoned outputs.
#include "backend/cuda/kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <utility>
#include <limits>

#include "backend/cpu/ops.h"
#include "backend/cuda/gemm.h"
#include "cuda_test_util.h"
#include "engine/model_runner.h"
#include "engine/sampler.h"

namespace cascade::cuda::test {
namespace {

TEST(CudaKernels, DeviceAvailabilityDoesNotAbort) {
  // Must return (true or false) on machines without a driver.
  const bool available = cuda_device_available();
  SUCCEED() << "device available: " << available;
}

TEST(CudaKernels, EmbeddingGathersRows) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(1);
  for (int dim : {64, 1000}) {
    const int vocab = 50, rows = 17;
    auto table = random_vec(rng, vocab * dim);
    std::vector<std::int32_t> ids(rows);
    for (auto& id : ids) id = static_cast<int>(rng() % vocab);
    auto d_table = upload(to_bf16(table));
    auto d_ids = upload(ids);
    DeviceBuffer<float> out(rows * dim);
    poison(out);
    ASSERT_EQ(launch_embedding({d_table.get(), d_ids.get(), out.get(), rows, dim}, nullptr), cudaSuccess);
    std::vector<float> ref(rows * dim);
    cpu::embedding(table.data(), ids.data(), rows, dim, ref.data());
    EXPECT_EQ(rel_error(download(out, rows * dim), ref), 0.0);
  }
}

TEST(CudaKernels, AddRmsNormMatchesCpu) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(2);
  // 1030 (not a multiple of 8) and 8200 (over the register path's limit) take the looping kernel.
  for (int dim : {128, 1024, 2560, 1030, 8200}) {
    for (bool with_x : {false, true}) {
      const int rows = 9;
      auto x = random_vec(rng, rows * dim);
      auto res = random_vec(rng, rows * dim, -2.0f, 2.0f, false);
      auto w = random_vec(rng, dim, 0.5f, 1.5f);
      auto d_x = upload(to_bf16(x));
      auto d_res = upload(res);
      auto d_w = upload(to_bf16(w));
      DeviceBuffer<bf16> out(rows * dim);
      poison(out);
      // In place: the new residual replaces the old one.
      AddRmsNormParams p;
      p.norm.delta = with_x ? d_x.get() : nullptr;
      p.norm.residual = d_res.get();
      p.norm.residual_out = d_res.get();
      p.norm.gamma = d_w.get();
      p.out = out.get();
      p.norm.eps = 1e-6f;
      p.rows = rows;
      p.dim = dim;
      ASSERT_EQ(launch_add_rms_norm(p, nullptr), cudaSuccess);
      std::vector<float> ref_res = res, ref_out(rows * dim);
      if (with_x) {
        cpu::add_rms_norm(x.data(), ref_res.data(), w.data(), 1e-6f, rows, dim, ref_out.data());
      } else {
        cpu::rms_norm(ref_res.data(), w.data(), 1e-6f, rows, dim, ref_out.data());
      }
      EXPECT_LT(rel_error(from_bf16(download(out, rows * dim)), ref_out), 1e-2) << dim;
      EXPECT_LT(rel_error(download(d_res, rows * dim), ref_res), 1e-6) << dim;
      const auto in_place_out = download(out, rows * dim);

      // Into another buffer (the runner's two residual buffers): the same output, the new residual
      // there, the old one untouched.
      auto d_res_in = upload(res);
      DeviceBuffer<float> res_out(rows * dim);
      poison(res_out);
      poison(out);
      p.norm.residual = d_res_in.get();
      p.norm.residual_out = res_out.get();
      ASSERT_EQ(launch_add_rms_norm(p, nullptr), cudaSuccess);
      EXPECT_EQ(download(out, rows * dim), in_place_out) << dim;
      EXPECT_LT(rel_error(download(res_out, rows * dim), ref_res), 1e-6) << dim;
      EXPECT_EQ(rel_error(download(d_res_in, rows * dim), res), 0.0) << "input residual must be untouched";

      // Gathered rows without writing the residual (the final norm before lm_head), clearing
      // the lm_head's argmax keys on the way (the first clear_n of them, no more).
      std::vector<std::int32_t> idx = {3, 0, 8};
      auto d_idx = upload(idx);
      auto d_res2 = upload(res);
      DeviceBuffer<unsigned long long> keys(8);
      CUDA_TRY(cudaMemset(keys.get(), 0xab, keys.bytes()));
      poison(out);
      p.norm.residual = d_res2.get();
      p.norm.residual_out = nullptr;
      p.norm.row_index = d_idx.get();
      p.rows = 3;
      p.clear = keys.get();
      p.clear_n = 5;
      ASSERT_EQ(launch_add_rms_norm(p, nullptr), cudaSuccess);
      std::vector<unsigned long long> want_keys(8, 0xababababababababull);
      std::fill_n(want_keys.begin(), 5, 0ull);
      EXPECT_EQ(download(keys, 8), want_keys) << dim;
      std::vector<float> ref_g(3 * dim);
      for (int j = 0; j < 3; ++j) {
        std::copy_n(ref_out.begin() + idx[j] * dim, dim, ref_g.begin() + j * dim);
      }
      EXPECT_LT(rel_error(from_bf16(download(out, 3 * dim)), ref_g), 1e-2);
      EXPECT_EQ(rel_error(download(d_res2, rows * dim), res), 0.0) << "residual must be untouched";
    }
  }
}

// Host side (runs in CI): the norm refuses more keys to clear than it has threads for, a negative
// count, and keys to clear without their buffer, before touching the device.
TEST(CudaKernels, AddRmsNormRefusesBadClears) {
  AddRmsNormParams p;
  p.rows = 1;
  p.dim = 8;
  p.clear_n = 1;
  EXPECT_EQ(launch_add_rms_norm(p, nullptr), cudaErrorInvalidValue);
  unsigned long long key = 0;
  p.clear = &key;
  p.clear_n = kNormClearMax + 1;
  EXPECT_EQ(launch_add_rms_norm(p, nullptr), cudaErrorInvalidValue);
  p.clear_n = -1;
  EXPECT_EQ(launch_add_rms_norm(p, nullptr), cudaErrorInvalidValue);
}

TEST(CudaKernels, QkNormRopeWritesQAndPagedKv) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(3);
  struct Shape { int h, kvh, d; };
  for (Shape s : {Shape{4, 2, 128}, Shape{8, 1, 64}, Shape{2, 2, 64}, Shape{16, 8, 128}}) {
    const int rows = 7, slots = 64, width = (s.h + 2 * s.kvh) * s.d;
    RopeConfig rope;
    rope.theta = 1000000.0;
    auto qkv = random_vec(rng, rows * width, -3.0f, 3.0f);
    auto qn = random_vec(rng, s.d, 0.5f, 1.5f), kn = random_vec(rng, s.d, 0.5f, 1.5f);
    std::vector<std::int32_t> pos(rows), slot(rows);
    for (int r = 0; r < rows; ++r) pos[r] = static_cast<int>(rng() % 40000);
    std::vector<int> perm(slots);
    for (int i = 0; i < slots; ++i) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int r = 0; r < rows; ++r) slot[r] = perm[r];
    const QkNormRopeInputs in(qkv, qn, kn, rope, pos, slot, s.h, s.kvh, s.d);
    DeviceBuffer<bf16> q(rows * s.h * s.d), kc(slots * s.kvh * s.d), vc(slots * s.kvh * s.d);
    poison(q);
    poison(kc);
    poison(vc);
    const QkNormRopeParams p = in.params(q.get(), kc.get(), vc.get());
    ASSERT_EQ(launch_qk_norm_rope_kv_write(p, nullptr), cudaSuccess);
    // Reference: CPU RMSNorm per head, CPU RoPE.
    std::vector<float> rq(rows * s.h * s.d), rk(rows * s.kvh * s.d), rv(rows * s.kvh * s.d);
    for (int r = 0; r < rows; ++r) {
      const float* row = qkv.data() + r * width;
      std::copy_n(row, s.h * s.d, rq.begin() + r * s.h * s.d);
      std::copy_n(row + s.h * s.d, s.kvh * s.d, rk.begin() + r * s.kvh * s.d);
      std::copy_n(row + (s.h + s.kvh) * s.d, s.kvh * s.d, rv.begin() + r * s.kvh * s.d);
    }
    cpu::rms_norm(rq.data(), qn.data(), 1e-6f, rows * s.h, s.d, rq.data());
    cpu::rms_norm(rk.data(), kn.data(), 1e-6f, rows * s.kvh, s.d, rk.data());
    cpu::rope_rotate_half(rq.data(), pos.data(), rows, s.h, s.d, rope);
    cpu::rope_rotate_half(rk.data(), pos.data(), rows, s.kvh, s.d, rope);
    EXPECT_LT(rel_error(from_bf16(download(q, rq.size())), rq), 1e-2);
    auto kh = from_bf16(download(kc, kc.size())), vh = from_bf16(download(vc, vc.size()));
    std::vector<float> gk(rk.size()), gv(rv.size());
    for (int r = 0; r < rows; ++r) {
      std::copy_n(kh.begin() + slot[r] * s.kvh * s.d, s.kvh * s.d, gk.begin() + r * s.kvh * s.d);
      std::copy_n(vh.begin() + slot[r] * s.kvh * s.d, s.kvh * s.d, gv.begin() + r * s.kvh * s.d);
    }
    EXPECT_LT(rel_error(gk, rk), 1e-2);
    EXPECT_EQ(rel_error(gv, rv), 0.0);
    EXPECT_TRUE(std::isnan(kh[perm[rows] * s.kvh * s.d])) << "an unmapped slot was written";
  }
}

TEST(CudaKernels, SiluMulMatchesCpu) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(4);
  for (int inter : {96, 3072}) {
    const int rows = 5;
    auto gu = random_vec(rng, rows * 2 * inter, -6.0f, 6.0f);
    auto d_gu = upload(to_bf16(gu));
    DeviceBuffer<bf16> out(rows * inter);
    poison(out);
    ASSERT_EQ(launch_silu_mul({d_gu.get(), out.get(), rows, inter}, nullptr), cudaSuccess);
    std::vector<float> ref(rows * inter);
    cpu::silu_mul(gu.data(), rows, inter, ref.data());
    EXPECT_LT(rel_error(from_bf16(download(out, ref.size())), ref), 1e-2);
  }
}

TEST(CudaKernels, MergeStatesIsExactLogSumExp) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(5);
  // head_dim 64 and 128 take the warp-per-(row, head) kernel: 1 state, 16 (one round of loads),
  // 17, 33 and 70 (a partial round; more than 32 states, so lse in two and three chunks of 32).
  // head_dim 96 takes the block-per-(row, head) kernel: 3 and 8 states (one batch of 8), 9 and 40
  // (batches of 16, the last partial).
  for (const auto [d, ns] : {std::pair{64, 1}, std::pair{128, 1}, std::pair{64, 3}, std::pair{128, 16},
                             std::pair{64, 17}, std::pair{128, 33}, std::pair{64, 40}, std::pair{128, 70},
                             std::pair{96, 3}, std::pair{96, 8}, std::pair{96, 9}, std::pair{96, 40}}) {
    const int rows = 6, heads = 5;
    auto o = random_vec(rng, ns * rows * heads * d, -1, 1, false);
    auto lse = random_vec(rng, ns * rows * heads, -5, 5, false);
    for (int i = 0; i < rows * heads; i += 3) lse[i] = -INFINITY;  // empty state 0
    for (int i = 0; i < rows * heads; i += 5) o[i * d] = NAN;       // its o must be ignored
    for (int s = 0; s < ns; ++s) lse[s * rows * heads + 7] = -INFINITY;  // fully empty (row 1, head 2)
    for (const int s : {17, 33}) {  // empty states, NaN o, in the warp kernel's later rounds
      if (s >= ns) continue;
      for (const int rh : {4, 11}) {
        lse[s * rows * heads + rh] = -INFINITY;
        o[(s * rows * heads + rh) * d] = NAN;
      }
    }
    auto d_o = upload(o), d_lse = upload(lse);
    DeviceBuffer<float> out_o(rows * heads * d), out_lse(rows * heads);
    DeviceBuffer<bf16> out(rows * heads * d);
    poison(out_o);
    poison(out_lse);
    poison(out);
    MergeStatesParams p;
    p.o = d_o.get();
    p.lse = d_lse.get();
    p.out = out.get();
    p.out_o = out_o.get();
    p.out_lse = out_lse.get();
    p.num_states = ns;
    p.rows = rows;
    p.heads = heads;
    p.head_dim = d;
    // Fix the NaN o entries only where the state is empty.
    for (int i = 0; i < rows * heads; ++i) {
      if (lse[i] > -INFINITY && std::isnan(o[i * d])) o[i * d] = 0.25f;
    }
    d_o = upload(o);
    p.o = d_o.get();
    ASSERT_EQ(launch_merge_states(p, nullptr), cudaSuccess);
    std::vector<double> ro(rows * heads * d), rl(rows * heads);
    for (int rh = 0; rh < rows * heads; ++rh) {
      double m = -INFINITY;
      for (int s = 0; s < ns; ++s) m = std::max<double>(m, lse[s * rows * heads + rh]);
      double den = 0;
      for (int s = 0; s < ns; ++s) {
        const double l = lse[s * rows * heads + rh];
        if (l > -INFINITY) den += std::exp(l - m);
      }
      rl[rh] = m > -INFINITY ? m + std::log(den) : -1e30;
      for (int k = 0; k < d; ++k) {
        double acc = 0;
        for (int s = 0; s < ns; ++s) {
          const double l = lse[s * rows * heads + rh];
          if (l > -INFINITY) acc += std::exp(l - m) * o[(s * rows * heads + rh) * d + k];
        }
        ro[rh * d + k] = m > -INFINITY ? acc / den : 0.0;
      }
    }
    auto gl = download(out_lse, rl.size());
    EXPECT_TRUE(std::isinf(gl[7]) && gl[7] < 0);
    for (int rh = 0; rh < rows * heads; ++rh) {  // fully empty (row 1, head 2; with 1 state, every third)
      if (rl[rh] != -1e30) continue;
      EXPECT_TRUE(std::isinf(gl[rh]) && gl[rh] < 0) << rh;
      gl[rh] = -1e30f;
    }
    EXPECT_LT(rel_error(download(out_o, ro.size()), ro), 1e-5) << "head_dim " << d << ", " << ns << " states";
    EXPECT_LT(rel_error(from_bf16(download(out, ro.size())), ro), 1e-2) << "head_dim " << d << ", " << ns << " states";
    EXPECT_LT(rel_error(gl, rl), 1e-5);
    // o one float past an aligned address takes the block kernel (the warp kernel loads float4s):
    // the same result.
    std::vector<float> shifted(o.size() + 1, 0.0f);
    std::copy(o.begin(), o.end(), shifted.begin() + 1);
    auto d_shifted = upload(shifted);
    poison(out_o);
    p.o = d_shifted.get() + 1;
    ASSERT_EQ(launch_merge_states(p, nullptr), cudaSuccess);
    EXPECT_LT(rel_error(download(out_o, ro.size()), ro), 1e-5) << "misaligned o, head_dim " << d << ", " << ns << " states";
  }
}

TEST(CudaKernels, GemmMatchesCpuMatmul) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(6);
  Gemm gemm;
  struct Shape { int m, n, k; };
  for (Shape s : {Shape{1, 256, 128}, Shape{37, 520, 320}, Shape{128, 1000, 1024}}) {
    auto x = random_vec(rng, s.m * s.k), w = random_vec(rng, s.n * s.k);
    auto d_x = upload(to_bf16(x)), d_w = upload(to_bf16(w));
    std::vector<float> ref(s.m * s.n);
    cpu::matmul_nt(x.data(), w.data(), nullptr, s.m, s.n, s.k, ref.data());
    DeviceBuffer<bf16> yb(s.m * s.n);
    DeviceBuffer<float> yf(s.m * s.n);
    poison(yb);
    poison(yf);
    gemm.run(d_x.get(), d_w.get(), yb.get(), false, s.m, s.n, s.k, nullptr);
    gemm.run(d_x.get(), d_w.get(), yf.get(), true, s.m, s.n, s.k, nullptr);
    EXPECT_LT(rel_error(from_bf16(download(yb, ref.size())), ref), 1e-2) << s.m;
    EXPECT_LT(rel_error(download(yf, ref.size()), ref), 1e-5) << s.m;
  }
}

TEST(CudaKernels, SamplingMatchesCpuSampler) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(7);
  // 40: fewer 16-byte chunks than scan blocks (empty ranges); 1001: the scalar scan (V % 4 != 0).
  for (int vocab : {40, 1001, 1000, 151936}) {
    const int rows = 24;
    std::vector<float> logits(static_cast<std::size_t>(rows) * vocab);
    std::normal_distribution<float> nd(0.0f, 3.0f);
    for (float& v : logits) v = nd(rng);
    logits[5 * vocab + 3] = NAN;
    // A greedy row whose maximum occurs three times, far apart (in different scan blocks): the
    // lowest id wins.
    for (int id : {vocab - 1, vocab / 2, 10}) logits[8 * static_cast<std::size_t>(vocab) + id] = 100.0f;
    for (int i = 0; i < vocab; ++i) logits[7 * static_cast<std::size_t>(vocab) + i] = -INFINITY;
    std::vector<RowSampling> params(rows);
    std::vector<float> t(rows), tp(rows), mp(rows);
    std::vector<int> tk(rows);
    std::vector<unsigned long long> seed(rows), step(rows);
    for (int r = 0; r < rows; ++r) {
      RowSampling& p = params[r];
      p.temperature = r % 4 == 0 ? 0.0f : 0.3f + 0.2f * (r % 5);
      p.top_k = r % 3 == 0 ? 0 : static_cast<int>(1 + rng() % 50);
      p.top_p = r % 2 == 0 ? 1.0f : 0.5f + 0.1f * (r % 5);
      p.min_p = r % 5 == 1 ? 0.05f : 0.0f;
      p.seed = rng();
      p.step = rng() % 1000;
      t[r] = p.temperature;
      tk[r] = p.top_k;
      tp[r] = p.top_p;
      mp[r] = p.min_p;
      seed[r] = p.seed;
      step[r] = p.step;
    }
    auto d_l = upload(logits);
    auto d_t = upload(t), d_tp = upload(tp), d_mp = upload(mp);
    auto d_tk = upload(tk);
    auto d_seed = upload(seed), d_step = upload(step);
    DeviceBuffer<std::int32_t> out(rows);
    // The argmax scan in one block per row, and split over several (the last block combines).
    DeviceBuffer<float> scan_v(rows * kSampleMaxScanBlocks);
    DeviceBuffer<int> scan_i(rows * kSampleMaxScanBlocks);
    DeviceBuffer<unsigned> counters(rows);
    CUDA_TRY(cudaMemset(counters.get(), 0, counters.bytes()));
    for (const int blocks : {1, 3, kSampleMaxScanBlocks, kSampleMaxScanBlocks}) {
      poison(out);
      SampleParams sp{d_l.get(), d_t.get(), d_tk.get(), d_tp.get(), d_mp.get(), d_seed.get(),
                      d_step.get(), out.get(), rows, vocab};
      sp.scan_blocks = blocks;
      sp.scan_v = scan_v.get();
      sp.scan_i = scan_i.get();
      sp.scan_counters = counters.get();
      ASSERT_EQ(launch_sample(sp, nullptr), cudaSuccess);
      auto got = download(out, rows);
      for (int r = 0; r < rows; ++r) {
        std::span<const float> row(logits.data() + static_cast<std::size_t>(r) * vocab, vocab);
        if (r == 7) {
          EXPECT_EQ(got[r], -1) << "all -inf row, " << blocks << " scan blocks";
          continue;
        }
        EXPECT_EQ(got[r], sample_token(row, params[r]))
            << "row " << r << " vocab " << vocab << ", " << blocks << " scan blocks";
      }
      EXPECT_EQ(got[8], 10) << blocks << " scan blocks";
    }
    // The counters are back at zero for the next launch (the repeated 16-block run above).
    std::vector<unsigned> zero(rows, 0u);
    EXPECT_EQ(download(counters, rows), zero);
  }
}

}  // namespace
}  // namespace cascade::cuda::test
