#include "backend/cpu/ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace cascade::cpu {
namespace {

constexpr int kLanes = 16;  // partial sums per dot product; fixed so every row reduces identically

// Dot products of RM rows of x with RN rows of w. Every (m, n) result is produced by the same
// operations in the same order regardless of RM/RN, which keeps the matmul batch-invariant.
template <int RM, int RN>
inline void dot_tile(const float* const* xs, const float* const* ws, int K, float out[RM][RN]) {
  float acc[RM][RN][kLanes] = {};
  const int kmain = K - K % kLanes;
  for (int k = 0; k < kmain; k += kLanes) {
    for (int i = 0; i < RM; ++i) {
      for (int j = 0; j < RN; ++j) {
        for (int l = 0; l < kLanes; ++l) acc[i][j][l] += xs[i][k + l] * ws[j][k + l];
      }
    }
  }
  for (int i = 0; i < RM; ++i) {
    for (int j = 0; j < RN; ++j) {
      for (int k = kmain; k < K; ++k) acc[i][j][k - kmain] += xs[i][k] * ws[j][k];
      // Fixed pairwise tree over the lanes.
      float s8[8], s4[4];
      for (int l = 0; l < 8; ++l) s8[l] = acc[i][j][l] + acc[i][j][l + 8];
      for (int l = 0; l < 4; ++l) s4[l] = s8[l] + s8[l + 4];
      out[i][j] = (s4[0] + s4[2]) + (s4[1] + s4[3]);
    }
  }
}

}  // namespace

void matmul_nt(const float* x, const float* w, const float* bias, int M, int N, int K, float* y) {
  constexpr int RM = 4, RN = 4;
  const int n_tiles = (N + RN - 1) / RN;
  // Parallel over output columns: each thread streams its slice of w once per block of rows.
#pragma omp parallel for schedule(static) if (static_cast<long>(M) * N * K > (1L << 20))
  for (int nt = 0; nt < n_tiles; ++nt) {
    const int n0 = nt * RN;
    const int rn = std::min(RN, N - n0);
    for (int m0 = 0; m0 < M; m0 += RM) {
      const int rm = std::min(RM, M - m0);
      const float* xs[RM];
      const float* ws[RN];
      for (int i = 0; i < RM; ++i) xs[i] = x + static_cast<long>(std::min(m0 + i, M - 1)) * K;
      for (int j = 0; j < RN; ++j) ws[j] = w + static_cast<long>(std::min(n0 + j, N - 1)) * K;
      float out[RM][RN];
      dot_tile<RM, RN>(xs, ws, K, out);
      for (int i = 0; i < rm; ++i) {
        for (int j = 0; j < rn; ++j) {
          float v = out[i][j];
          if (bias != nullptr) v += bias[n0 + j];
          y[static_cast<long>(m0 + i) * N + n0 + j] = v;
        }
      }
    }
  }
}

namespace {
inline void rms_norm_row(const float* x, const float* w, float eps, int dim, float* out) {
  double ss = 0.0;
  for (int i = 0; i < dim; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = static_cast<float>(1.0 / std::sqrt(ss / dim + eps));
  for (int i = 0; i < dim; ++i) out[i] = (x[i] * inv) * w[i];
}
}  // namespace

void rms_norm(const float* x, const float* w, float eps, int rows, int dim, float* out) {
#pragma omp parallel for schedule(static) if (static_cast<long>(rows) * dim > (1L << 16))
  for (int r = 0; r < rows; ++r) {
    rms_norm_row(x + static_cast<long>(r) * dim, w, eps, dim, out + static_cast<long>(r) * dim);
  }
}

void add_rms_norm(const float* x, float* residual, const float* w, float eps, int rows, int dim,
                  float* out) {
#pragma omp parallel for schedule(static) if (static_cast<long>(rows) * dim > (1L << 16))
  for (int r = 0; r < rows; ++r) {
    float* res = residual + static_cast<long>(r) * dim;
    const float* xr = x + static_cast<long>(r) * dim;
    for (int i = 0; i < dim; ++i) res[i] += xr[i];
    rms_norm_row(res, w, eps, dim, out + static_cast<long>(r) * dim);
  }
}

void rope_inv_freq(const RopeConfig& rope, int head_dim, double* inv_freq) {
  const double factor = rope.type == "linear" ? rope.factor : 1.0;
  for (int i = 0; i < head_dim / 2; ++i) {
    inv_freq[i] = 1.0 / std::pow(rope.theta, (2.0 * i) / head_dim) / factor;
  }
}

void rope_rotate_half(float* x, const std::int32_t* positions, int rows, int heads, int head_dim,
                      const RopeConfig& rope) {
  const int half = head_dim / 2;
  std::vector<double> inv_freq(half);
  rope_inv_freq(rope, head_dim, inv_freq.data());
#pragma omp parallel for schedule(static) if (static_cast<long>(rows) * heads * head_dim > (1L << 16))
  for (int r = 0; r < rows; ++r) {
    // cos/sin depend only on the position, computed in double then rounded like HF's fp32 tables.
    std::vector<float> c(half), s(half);
    for (int i = 0; i < half; ++i) {
      const float angle = static_cast<float>(positions[r]) * static_cast<float>(inv_freq[i]);
      c[i] = std::cos(angle);
      s[i] = std::sin(angle);
    }
    for (int h = 0; h < heads; ++h) {
      float* v = x + (static_cast<long>(r) * heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}

void silu_mul(const float* gate_up, int rows, int inter, float* out) {
#pragma omp parallel for schedule(static) if (static_cast<long>(rows) * inter > (1L << 16))
  for (int r = 0; r < rows; ++r) {
    const float* g = gate_up + static_cast<long>(r) * 2 * inter;
    const float* u = g + inter;
    float* o = out + static_cast<long>(r) * inter;
    for (int i = 0; i < inter; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

void embedding(const float* table, const std::int32_t* ids, int rows, int dim, float* out) {
  for (int r = 0; r < rows; ++r) {
    const float* src = table + static_cast<long>(ids[r]) * dim;
    std::copy(src, src + dim, out + static_cast<long>(r) * dim);
  }
}

}  // namespace cascade::cpu
