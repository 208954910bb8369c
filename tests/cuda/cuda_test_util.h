// Helpers for the CUDA tests: skip without a device, bf16 rounding on the host, device round trips,
// NaN poisoning and relative-error checks (NaN never passes).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/ab_switch.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_runner.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/kernels.h"

#define SKIP_WITHOUT_GPU()                                                     \
  do {                                                                         \
    if (!::cascade::cuda_device_available()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

namespace cascade::cuda::test {

using bf16 = __nv_bfloat16;

inline float round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// Compute capability 9.0 (H100/H200): where this build's sm_90a kernels must be the ones running.
inline bool device_is_sm90() {
  int dev = 0, major = 0, minor = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major == 9 && minor == 0;
}

inline std::vector<float> random_vec(std::mt19937_64& rng, std::size_t n, float lo = -1.0f,
                                     float hi = 1.0f, bool bf16_exact = true) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = bf16_exact ? round_bf16(d(rng)) : d(rng);
  return v;
}

inline std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16_rn(v[i]);
  return out;
}
inline std::vector<float> from_bf16(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
  return out;
}

template <typename T>
DeviceBuffer<T> upload(const std::vector<T>& v) {
  DeviceBuffer<T> d(std::max<std::size_t>(v.size(), 1));
  CUDA_TRY(cudaMemcpy(d.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}
template <typename T>
std::vector<T> download(const DeviceBuffer<T>& d, std::size_t n) {
  std::vector<T> v(n);
  CUDA_TRY(cudaDeviceSynchronize());
  CUDA_TRY(cudaMemcpy(v.data(), d.get(), n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}
// Fills with 0xFF bytes: NaN for both fp32 and bf16.
template <typename T>
void poison(DeviceBuffer<T>& d) {
  CUDA_TRY(cudaMemset(d.get(), 0xFF, d.bytes()));
}

// ||a - b|| / ||b||, +inf if any value of a is NaN/inf where b is finite.
inline double rel_error(const std::vector<float>& a, const std::vector<double>& b) {
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}
inline double rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  return rel_error(a, std::vector<double>(b.begin(), b.end()));
}

// y[m][n] = sum_k x[m][k] * w[n][k] in float64 (x and w hold bf16-exact values).
inline std::vector<double> matmul_f64(const std::vector<float>& x, const std::vector<float>& w, int M,
                               int N, int K) {
  std::vector<double> y(static_cast<std::size_t>(M) * N);
#pragma omp parallel for
  for (int n = 0; n < N; ++n) {
    for (int m = 0; m < M; ++m) {
      double acc = 0.0;
      const float* xr = x.data() + static_cast<std::size_t>(m) * K;
      const float* wr = w.data() + static_cast<std::size_t>(n) * K;
      for (int k = 0; k < K; ++k) acc += static_cast<double>(xr[k]) * wr[k];
      y[static_cast<std::size_t>(m) * N + n] = acc;
    }
  }
  return y;
}

// silu(gate) * up rounded to bf16, from rows [gate | up] of gate_up ([M, 2K], bf16-exact values):
// the activation silu_mul writes and the down projection reads.
inline std::vector<float> silu_mul_ref(const std::vector<float>& gate_up, int M, int K) {
  std::vector<float> act(static_cast<std::size_t>(M) * K);
  for (int m = 0; m < M; ++m) {
    const float* row = gate_up.data() + static_cast<std::size_t>(m) * 2 * K;
    for (int k = 0; k < K; ++k) {
      act[static_cast<std::size_t>(m) * K + k] = round_bf16(row[k] / (1.0f + std::exp(-row[k])) * row[K + k]);
    }
  }
  return act;
}

// The sampler's greedy rule on each row of logits y [M, N] (the fused argmax epilogues' reference):
// the lowest id holding the row's largest value, NaN skipped, -1 if no value is > -inf.
inline std::vector<std::int32_t> greedy_ids(const std::vector<float>& y, int M, int N) {
  std::vector<std::int32_t> out(M, -1);
  for (int m = 0; m < M; ++m) {
    float best = -INFINITY;
    for (int n = 0; n < N; ++n) {
      const float v = y[static_cast<std::size_t>(m) * N + n];
      if (v > best) {
        best = v;
        out[m] = n;
      }
    }
  }
  return out;
}

// max |a - b| / max |b|; +inf if any a is not finite (poisoned outputs never pass).
inline double max_rel_error(const std::vector<float>& a, const std::vector<double>& b) {
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num = std::max(num, std::abs(a[i] - b[i]));
    den = std::max(den, std::abs(b[i]));
  }
  return den > 0 ? num / den : num;
}

// Gemm::run against Gemm::run_cublaslt on the same random inputs (fp32 out): max relative error.
inline double run_vs_cublaslt(Gemm& gemm, std::mt19937_64& rng, int M, int N, int K) {
  auto x = random_vec(rng, static_cast<std::size_t>(M) * K);
  auto w = random_vec(rng, static_cast<std::size_t>(N) * K);
  auto d_x = upload(to_bf16(x)), d_w = upload(to_bf16(w));
  DeviceBuffer<float> a(static_cast<std::size_t>(M) * N), b(static_cast<std::size_t>(M) * N);
  poison(a);
  poison(b);
  gemm.run(d_x.get(), d_w.get(), a.get(), true, M, N, K, nullptr);
  gemm.run_cublaslt(d_x.get(), d_w.get(), b.get(), true, M, N, K, nullptr);
  const auto va = download(a, a.size()), vb = download(b, b.size());
  return max_rel_error(va, std::vector<double>(vb.begin(), vb.end()));
}

// qk_norm_rope_kernel's inputs on the device: bf16 qkv rows [rows, (heads + 2 kv_heads) * d] and
// q/k norm weights, the CPU backend's rotary inv_freq (cpu::rope_inv_freq of `rope`), positions and
// KV slots by row. params() points a QkNormRopeParams at them and at the given outputs.
struct QkNormRopeInputs {
  DeviceBuffer<bf16> qkv, q_norm, k_norm;
  DeviceBuffer<float> inv_freq;
  DeviceBuffer<std::int32_t> positions, slots;
  int rows = 0, heads = 0, kv_heads = 0, head_dim = 0;

  QkNormRopeInputs(const std::vector<float>& qkv_rows, const std::vector<float>& qn, const std::vector<float>& kn,
                   const RopeConfig& rope, const std::vector<std::int32_t>& pos,
                   const std::vector<std::int32_t>& slot, int h, int kvh, int d)
      : qkv(upload(to_bf16(qkv_rows))), q_norm(upload(to_bf16(qn))), k_norm(upload(to_bf16(kn))),
        inv_freq(upload(inv_freq_f32(rope, d))), positions(upload(pos)), slots(upload(slot)),
        rows(static_cast<int>(pos.size())), heads(h), kv_heads(kvh), head_dim(d) {}

  QkNormRopeParams params(bf16* q_out, bf16* k_cache, bf16* v_cache) const {
    QkNormRopeParams p;
    p.qkv = qkv.get();
    p.q_norm = q_norm.get();
    p.k_norm = k_norm.get();
    p.inv_freq = inv_freq.get();
    p.positions = positions.get();
    p.slot_mapping = slots.get();
    p.q_out = q_out;
    p.k_cache = k_cache;
    p.v_cache = v_cache;
    p.rows = rows;
    p.num_heads = heads;
    p.num_kv_heads = kv_heads;
    p.head_dim = head_dim;
    return p;
  }

  static std::vector<float> inv_freq_f32(const RopeConfig& rope, int d) {
    std::vector<double> inv(d / 2);
    cpu::rope_inv_freq(rope, d, inv.data());
    return {inv.begin(), inv.end()};
  }
};

}  // namespace cascade::cuda::test
