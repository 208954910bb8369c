// Device helpers shared by the CUDA kernels: warp and block reductions with a fixed order (so
// results are deterministic run to run), and the rounding of an RMSNorm's output. Block reductions
// must be called by every thread of the block; they return the result to all threads.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace cascade::cuda {

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct MinOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return b < a ? b : a; }
};

struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a < b ? b : a; }
};

// silu(g) * u in fp32, as every SiLU-and-multiply of the backend forms it (silu_mul_kernel, the
// down GEMV's input, the gated skinny GEMM), so that they agree bit for bit.
__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// Whether a pointer is 16-byte aligned (the vector loads and stores of the kernels need it).
__host__ __device__ inline bool aligned16(const void* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0;
}

// Two floats rounded to bf16 and packed (lo in the low half), as mma fragments and bf16x2
// stores take them.
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const unsigned*>(&v);
}

template <typename T, typename Op>
__device__ inline T warp_reduce(T v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ inline float warp_sum(float v) { return warp_reduce(v, SumOp{}); }

// acc[k] * inv as kVec (2 or 4) bf16 values at out (4- or 8-byte aligned): a merged row's dims.
template <int kVec>
__device__ __forceinline__ void store_scaled_bf16(__nv_bfloat16* out, const float (&acc)[kVec], float inv) {
  if constexpr (kVec == 4) {
    uint2 packed;
    packed.x = pack_bf16x2(acc[0] * inv, acc[1] * inv);
    packed.y = pack_bf16x2(acc[2] * inv, acc[3] * inv);
    *reinterpret_cast<uint2*>(out) = packed;
  } else {
    *reinterpret_cast<unsigned*>(out) = pack_bf16x2(acc[0] * inv, acc[1] * inv);
  }
}

// The merge of `ns` attention states (o, lse) of one (row, head) by one warp, kVec = head_dim / 32
// dims per lane: merge_states_warp_kernel's arithmetic, which a level merging its states in its
// CTA (attention.cu, kCtaMerge) shares so that the two agree bit for bit. lse_of(s) is state s's
// lse (natural log, -inf: empty) and o_of(s) this lane's Vec of its o. Each lane loads its dims of
// kStatesInFlight states at a time (the first round before the lse, so in flight together with
// them); the warp takes the maximum lse and the weights expf(lse - max), lane s % 32 weighing state
// s and summing its weights over rounds of 32 states, and adds the states in order with the weight
// of each taken from its lane. An empty state (weight 0) is skipped, so its o may be anything
// (NaN included). `lane` is the thread's lane. Leaves the weighted sum in acc and the lse maximum in m; returns the sum of
// the weights (0: every state empty). Every lane of the warp calls it.
inline constexpr int kStatesInFlight = 16;
template <int kVec, typename LseOf, typename OOf>
__device__ __forceinline__ float merge_states_warp(int ns, int lane, const LseOf& lse_of, const OOf& o_of,
                                                   float (&acc)[kVec], float& m) {
  using Vec = std::conditional_t<kVec == 4, float4, float2>;
  Vec v[kStatesInFlight];
  auto load_round = [&](int s_first) {  // states s_first .. s_first + kStatesInFlight - 1
#pragma unroll
    for (int i = 0; i < kStatesInFlight; ++i) {
      const int s = s_first + i;
      v[i] = s < ns ? o_of(s) : Vec{};
    }
  };
  load_round(0);  // independent of the weights: in flight with the lse loads below
  float mx = -INFINITY;
  for (int s = lane; s < ns; s += 32) mx = fmaxf(mx, lse_of(s));
  mx = warp_reduce(mx, MaxOp{});
  float den_part = 0.0f;
#pragma unroll
  for (int k = 0; k < kVec; ++k) acc[k] = 0.0f;
  if (mx > -INFINITY) {
    for (int s0 = 0; s0 < ns; s0 += 32) {
      const float l = s0 + lane < ns ? lse_of(s0 + lane) : -INFINITY;
      const float w = l > -INFINITY ? expf(l - mx) : 0.0f;
      den_part += w;
      for (int i0 = 0; i0 < 32 && s0 + i0 < ns; i0 += kStatesInFlight) {
        if (s0 + i0 > 0) load_round(s0 + i0);
#pragma unroll
        for (int i = 0; i < kStatesInFlight; ++i) {
          const float wi = __shfl_sync(0xffffffffu, w, i0 + i);
          if (wi > 0.0f) {  // 0 for states past ns too
            const float* f = reinterpret_cast<const float*>(&v[i]);
#pragma unroll
            for (int k = 0; k < kVec; ++k) acc[k] += wi * f[k];
          }
        }
      }
    }
  }
  m = mx;
  return warp_sum(den_part);
}

// q/k RMSNorm + rotary embedding (rotate-half) of one head of kD dims, a lane of the warp holding
// dims lane + 32 j. The one arithmetic of qk_norm_rope_kernel and of the attention levels that
// take it in (AttentionLevelParams::rope), with explicit roundings so that both give the same
// bits. RopeLane: what a lane needs of the step's constants (rotary cos/sin of its dims below
// kD / 2 at one position, and its dims' q_norm / k_norm weights).
template <int kD>
struct RopeLane {
  float cs[kD / 64], sn[kD / 64], wq[kD / 32], wk[kD / 32];
  __device__ void load(float pos, const float* inv_freq, const __nv_bfloat16* q_norm, const __nv_bfloat16* k_norm) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < kD / 64; ++j) {
      const float angle = pos * inv_freq[lane + 32 * j];
      cs[j] = cosf(angle);
      sn[j] = sinf(angle);
    }
#pragma unroll
    for (int j = 0; j < kD / 32; ++j) {
      wq[j] = __bfloat162float(q_norm[lane + 32 * j]);
      wk[j] = __bfloat162float(k_norm[lane + 32 * j]);
    }
  }
};

// v in place, with weights w: the sum of squares of the lane's dims in order (fused
// multiply-adds from 0), added across the warp in warp_reduce's order; rsqrt(sum * (1 / kD) +
// eps) in one rounding (kD is a power of two, so these are the division's bits); each value
// scaled, rounded to bf16, weighted and rounded again; dims d and d + kD / 2 rotated together.
// Every lane of the warp calls it (warp_sum).
template <int kD>
__device__ __forceinline__ void norm_rope_head(float (&v)[kD / 32], const float (&w)[kD / 32], float eps,
                                               const RopeLane<kD>& rl) {
  constexpr int kPer = kD / 32;
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) ss = __fmaf_rn(v[j], v[j], ss);
  const float inv = rsqrtf(__fmaf_rn(warp_sum(ss), 1.0f / static_cast<float>(kD), eps));
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const float n = __bfloat162float(__float2bfloat16_rn(__fmul_rn(v[j], inv)));
    v[j] = __bfloat162float(__float2bfloat16_rn(__fmul_rn(w[j], n)));
  }
#pragma unroll
  for (int j = 0; j < kPer / 2; ++j) {
    const float a = v[j], b = v[j + kPer / 2];
    v[j] = __fmaf_rn(a, rl.cs[j], -__fmul_rn(b, rl.sn[j]));
    v[j + kPer / 2] = __fmaf_rn(b, rl.cs[j], __fmul_rn(a, rl.sn[j]));
  }
}

// 2^x by the MUFU alone (ex2.approx.ftz): exp2f without fast math adds a compare and two
// predicated multiplies around it to keep subnormal results, which a softmax weight never needs
// (a weight below 2^-126 of the row's largest adds nothing an fp32 sum keeps); 2^-inf is +0.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// One step of FlashAttention's online softmax over a tile of scores in an mma/wgmma accumulator
// layout: s[j][e] is column 8j + 2 tig + (e & 1) of the thread's row e >> 1 (rows g and g + 8),
// masked keys -inf, and tile_max each row's maximum over this thread's columns. Reduces the
// maxima over the row's 4 threads, moves the running max (log2 units), scales the running sum,
// exponentiates s in place and adds it to the sum; corr[h] is what row h's output accumulators
// must be multiplied by before this tile's P V (exactly 1 where the row's max did not move).
// kRaw false (online_softmax_step): s is already in log2 units, 2^x by exp2f.
// kRaw true (online_softmax_step_raw): s is the raw q.k and scale2 (> 0) takes it into log2
// units: the running max moves to the scaled tile max (rounding is monotonic, so that is the
// max of the scaled scores) and each weight is 2^(s scale2 - max), one fused multiply-add and
// exp2_ftz: ~260 fewer instructions a warp per 128-key tile of the wide form (v27), whose
// softmax is on its critical path. The one-warp forms measured 3.5-6% slower over long contexts
// with it and a rescale skipped by a warp vote (v27 call 3), so they keep kRaw false.
template <bool kRaw, int kN>
__device__ __forceinline__ void online_softmax_step_impl(float (&s)[kN][4], float (&tile_max)[2], float scale2,
                                                         float (&m_run)[2], float (&l_run)[2], float (&corr)[2]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
    tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
    const float m_new = fmaxf(m_run[h], kRaw ? tile_max[h] * scale2 : tile_max[h]);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // all masked so far: avoid inf-inf
    corr[h] = kRaw ? exp2_ftz(m_run[h] - m_use) : exp2f(m_run[h] - m_use);
    m_run[h] = m_new;
    l_run[h] *= corr[h];
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      if constexpr (kRaw) {
        s[j][2 * h] = exp2_ftz(__fmaf_rn(s[j][2 * h], scale2, -m_use));
        s[j][2 * h + 1] = exp2_ftz(__fmaf_rn(s[j][2 * h + 1], scale2, -m_use));
      } else {
        s[j][2 * h] = exp2f(s[j][2 * h] - m_use);
        s[j][2 * h + 1] = exp2f(s[j][2 * h + 1] - m_use);
      }
      l_run[h] += s[j][2 * h] + s[j][2 * h + 1];
    }
  }
}
template <int kN>
__device__ __forceinline__ void online_softmax_step(float (&s)[kN][4], float (&tile_max)[2], float (&m_run)[2],
                                                    float (&l_run)[2], float (&corr)[2]) {
  online_softmax_step_impl<false>(s, tile_max, 1.0f, m_run, l_run, corr);
}
template <int kN>
__device__ __forceinline__ void online_softmax_step_raw(float (&s)[kN][4], float (&tile_max)[2], float scale2,
                                                        float (&m_run)[2], float (&l_run)[2], float (&corr)[2]) {
  online_softmax_step_impl<true>(s, tile_max, scale2, m_run, l_run, corr);
}

// Output accumulators times online_softmax_step's corr: acc(n, e) is accumulator e (row e >> 1)
// of column group n < kN. (The wide form first skips it where no row of the warp moved its max.)
template <int kN, typename Acc>
__device__ __forceinline__ void rescale_rows(const Acc& acc, const float (&corr)[2]) {
#pragma unroll
  for (int n = 0; n < kN; ++n) {
    acc(n, 0) *= corr[0];
    acc(n, 1) *= corr[0];
    acc(n, 2) *= corr[1];
    acc(n, 3) *= corr[1];
  }
}

// log2 e and ln 2: the kernels' scores and running maxima are in log2 units (exp2), the states'
// lse in natural log.
inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

// The end of a level: its stacked rows' sums, kept per thread, summed over the 4 threads of each
// row (rows g and g + 8 of the mma.sync and wgmma accumulator layouts, as online_softmax_step).
__device__ __forceinline__ void quad_sum_rows(float (&l_run)[2]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 1);
    l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 2);
  }
}

// The attention state of one stacked row from its running max (log2 units) and summed l: this
// thread's dims of o / l at o_row (acc(n, j): the accumulator of column 8n + 2 tig + j, n <
// kD / 8), zero where the row is empty (l 0 or NaN), and, by the row's thread tig 0, its lse
// (natural log; -inf where empty) at *lse_out. Every attention form writes its states with it, so
// merge_states sees one encoding.
template <int kD, typename Acc>
__device__ __forceinline__ void store_row_state(const Acc& acc, float m_run, float l_run, int tig, float* o_row,
                                                float* lse_out) {
  const bool empty = !(l_run > 0.0f);
  const float inv = empty ? 0.0f : 1.0f / l_run;
#pragma unroll
  for (int n = 0; n < kD / 8; ++n) {
    float2 v;
    v.x = acc(n, 0) * inv;
    v.y = acc(n, 1) * inv;
    *reinterpret_cast<float2*>(o_row + n * 8 + tig * 2) = v;
  }
  if (tig == 0) *lse_out = empty ? -INFINITY : (m_run + log2f(l_run)) * kLn2;
}

// `red` is shared scratch of 32 elements.
template <typename T, typename Op>
__device__ inline T block_reduce(T v, T* red, Op op) {
  v = warp_reduce(v, op);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  __syncthreads();  // red may still be read by a previous reduction
  if (lane == 0) red[warp] = v;
  __syncthreads();
  T r = red[0];
  for (int w = 1; w < nw; ++w) r = op(r, red[w]);
  return r;
}

__device__ inline float block_sum(float v, float* red) { return block_reduce(v, red, SumOp{}); }
__device__ inline int block_sum_int(int v, int* red) { return block_reduce(v, red, SumOp{}); }
__device__ inline double block_sum_double(double v, double* red) {
  return block_reduce(v, red, SumOp{});
}
__device__ inline unsigned long long block_min_u64(unsigned long long v, double* red) {
  return block_reduce(v, reinterpret_cast<unsigned long long*>(red), MinOp{});
}

// (v, id) beats (bv, bid): larger value, ties to the lower id. NaN never beats anything. Every
// argmax of the backend (the sampler, the lm_head GEMV's) combines candidates with it, so they
// all pick the same id.
__device__ __forceinline__ bool argmax_better(float v, int id, float bv, int bid) {
  return v > bv || (v == bv && id < bid);
}

// (value, id) argmax: larger value wins, ties to the lower id; id == sentinel loses to any id.
__device__ inline void block_argmax(float& v, int& id, float* red_v, int* red_i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, id, o);
    if (argmax_better(ov, oi, v, id)) {
      v = ov;
      id = oi;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) {
    red_v[warp] = v;
    red_i[warp] = id;
  }
  __syncthreads();
  v = red_v[0];
  id = red_i[0];
  for (int w = 1; w < nw; ++w) {
    if (argmax_better(red_v[w], red_i[w], v, id)) {
      v = red_v[w];
      id = red_i[w];
    }
  }
}

// For a grid whose blocks each leave a partial result for one block to combine: call from every
// thread of the block once the threads that wrote its part have each done __threadfence().
// Returns true (in every thread) in the last of `blocks` blocks to arrive at *counter, which
// then sees every block's part; that block leaves the counter at zero for the next use.
__device__ __forceinline__ bool last_block_to_arrive(unsigned* counter, unsigned blocks) {
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(counter, 1u) == blocks - 1;
    if (last) *counter = 0;
  }
  __syncthreads();
  if (!last) return false;
  __threadfence();
  return true;
}

// cp.async: 16 bytes global -> shared (sm_80+), zero-filled when !valid; groups committed and
// waited on per thread (wait<N>: at most N of this thread's groups still pending).
__device__ __forceinline__ void cp_async16(std::uint32_t smem_addr, const void* gmem, bool valid) {
  const int src_size = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr), "l"(gmem),
               "r"(src_size));
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  cp_async16(static_cast<std::uint32_t>(__cvta_generic_to_shared(smem)), gmem, valid);
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// The eight bf16 of one 16-byte chunk as floats (exact).
__device__ __forceinline__ void unpack_bf16x8(const uint4& u, float* f) {
  const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

// bf16(gamma * bf16(h * inv)) for the eight values of one 16-byte chunk (gamma: eight bf16), the
// rounding of every RMSNorm output here: the add+RMSNorm kernels and the GEMV that forms the norm
// itself (gemv.cu) give the same bits for the same h and inv.
__device__ __forceinline__ uint4 rms_norm_pack8(const float* h, float inv, const uint4& gamma) {
  float g[8];
  unpack_bf16x8(gamma, g);
  unsigned packed[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float n0 = __bfloat162float(__float2bfloat16_rn(h[2 * e] * inv));
    const float n1 = __bfloat162float(__float2bfloat16_rn(h[2 * e + 1] * inv));
    const __nv_bfloat162 o = __floats2bfloat162_rn(g[2 * e] * n0, g[2 * e + 1] * n1);
    packed[e] = *reinterpret_cast<const unsigned*>(&o);
  }
  return make_uint4(packed[0], packed[1], packed[2], packed[3]);
}

}  // namespace cascade::cuda
