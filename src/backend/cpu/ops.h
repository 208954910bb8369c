// fp32 reference ops of the CPU backend. Every CUDA kernel is checked against these.
//
// Batch invariance: each output row is computed by the same sequence of floating-point operations
// whatever the number of rows in the call, so a token's hidden states, K and V are bit-identical
// whether it is computed alone, in a batch, or after a cached prefix. This is what makes cached and
// uncached runs produce the same bits (and why the matmul is ours rather than BLAS sgemm, whose
// kernel choice and blocking may depend on M).
#pragma once

#include <cstdint>

#include "model/model_config.h"

namespace cascade::cpu {

// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n] if bias != nullptr). x: [M, K], w: [N, K], y: [M, N].
void matmul_nt(const float* x, const float* w, const float* bias, int M, int N, int K, float* y);

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, rows of length dim. out may alias x.
void rms_norm(const float* x, const float* w, float eps, int rows, int dim, float* out);

// residual[r] += x[r]; out[r] = rms_norm(residual[r]). (The fused form the GPU uses.)
void add_rms_norm(const float* x, float* residual, const float* w, float eps, int rows, int dim,
                  float* out);

// Rotary embedding, rotate-half convention (HF Qwen3), applied in place to x: [rows, heads, head_dim]
// at positions[rows].
void rope_rotate_half(float* x, const std::int32_t* positions, int rows, int heads, int head_dim,
                      const RopeConfig& rope);

// out[r, i] = silu(gate_up[r, i]) * gate_up[r, inter + i]; gate_up: [rows, 2 * inter], out: [rows, inter].
void silu_mul(const float* gate_up, int rows, int inter, float* out);

// out[r] = table[ids[r]], rows of length dim.
void embedding(const float* table, const std::int32_t* ids, int rows, int dim, float* out);

// inv_freq[i] = 1 / (theta^(2i/head_dim)) / factor(linear): the frequencies used by rope_rotate_half.
void rope_inv_freq(const RopeConfig& rope, int head_dim, double* inv_freq);

}  // namespace cascade::cpu
