#include "backend/cuda/kernels.h"

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/device_utils.cuh"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/timeline.cuh"
#include "backend/cuda/skinny_gemm.h"
#include "engine/sampler.h"

namespace cascade::cuda {
namespace {

__global__ void convert_kernel(ConvertParams p) {
  pdl_wait();  // launch.cuh: before any read or write of step data
  pdl_release();
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < p.n;
       i += stride) {
    p.out[i] = __float2bfloat16_rn(p.in[i]);
  }
}

__global__ void fill_kernel(float* out, std::int64_t n, float value) {
  if (threadIdx.x == 0) timeline::mark(timeline::kFill, 0);
  pdl_wait();  // launch.cuh: before any read or write of step data
  pdl_release();
  if (threadIdx.x == 0) timeline::mark(timeline::kFill, 2);
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    out[i] = value;
  }
  if (threadIdx.x == 0) timeline::mark(timeline::kFill, 5);
}

__global__ void embedding_kernel(EmbeddingParams p) {
  pdl_wait();  // launch.cuh: before any read or write of step data
  pdl_release();
  const int r = blockIdx.x;
  std::int32_t id = p.ids[r];
  if (p.feed != nullptr) {
    const std::int32_t f = p.feed[r];
    if (f >= 0) id = skinny_argmax_id(p.fed_keys[f]);
    if (f <= -2) id = p.fed_ids[-2 - f];
    if (id < 0) id = 0;
  }
  const bf16* src = p.table + static_cast<std::int64_t>(id) * p.dim;
  float* dst = p.residual + static_cast<std::int64_t>(r) * p.dim;
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x) dst[i] = __bfloat162float(src[i]);
}

constexpr int kNormThreads = 256;

// This block's rows: output row blockIdx.x reads residual (and delta) row row_index[blockIdx.x].
struct NormRow {
  const float* res;
  float* res_out;  // nullptr: h is not kept
  const bf16* x;   // nullptr: no addend
  bf16* out;
};
__device__ __forceinline__ NormRow norm_row(const AddRmsNormParams& p) {
  const ResidualNorm& nm = p.norm;
  const int j = blockIdx.x;
  const std::int64_t r = nm.row_index != nullptr ? nm.row_index[j] : j;
  return {nm.residual + r * p.dim, nm.residual_out != nullptr ? nm.residual_out + r * p.dim : nullptr,
          nm.delta != nullptr ? nm.delta + r * p.dim : nullptr, p.out + static_cast<std::int64_t>(j) * p.dim};
}

__global__ void __launch_bounds__(kNormThreads) add_rms_norm_kernel(AddRmsNormParams p) {
  pdl_wait();  // launch.cuh: before any read or write of step data
  pdl_release();
  if (blockIdx.x == 0 && static_cast<int>(threadIdx.x) < p.clear_n) p.clear[threadIdx.x] = 0ull;
  const NormRow row = norm_row(p);
  const float* res = row.res;
  float* res_out = row.res_out;
  const bf16* x = row.x;
  __shared__ float red[32];
  float ss = 0.0f;
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x) {
    float v = res[i];
    if (x != nullptr) v += __bfloat162float(x[i]);
    if (res_out != nullptr) res_out[i] = v;
    ss += v * v;
  }
  ss = block_sum(ss, red);
  const float inv = rsqrtf(ss / static_cast<float>(p.dim) + p.norm.eps);
  bf16* out = row.out;
  // Re-read (our own writes, which may have replaced the input, or the unchanged input) so no
  // row has to fit in registers.
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x) {
    float v = res_out != nullptr ? res_out[i] : x == nullptr ? res[i] : res[i] + __bfloat162float(x[i]);
    const float n = __bfloat162float(__float2bfloat16_rn(v * inv));
    out[i] = __float2bfloat16_rn(__bfloat162float(p.norm.gamma[i]) * n);
  }
}

// The same for rows whose dim is a multiple of 8 up to kNormThreads * 8 * kNormMaxChunks, with
// 16-byte aligned rows: each thread keeps its chunks of 8 in registers (one pass over memory, all
// loads in flight at once), since at decode batch sizes this kernel is bound by memory latency.
constexpr int kNormMaxChunks = 4;

__global__ void __launch_bounds__(kNormThreads) add_rms_norm_vec_kernel(AddRmsNormParams p) {
  pdl_wait();  // launch.cuh: before any read or write of step data
  pdl_release();
  if (blockIdx.x == 0 && static_cast<int>(threadIdx.x) < p.clear_n) p.clear[threadIdx.x] = 0ull;
  const NormRow row = norm_row(p);
  const float* res = row.res;
  float* res_out = row.res_out;
  const bf16* x = row.x;
  const int nch = p.dim / 8;
  __shared__ float red[32];
  float v[kNormMaxChunks][8];
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < kNormMaxChunks; ++k) {
    const int c = threadIdx.x + k * kNormThreads;
    if (c >= nch) continue;
    const float4 a = reinterpret_cast<const float4*>(res)[2 * c];
    const float4 b = reinterpret_cast<const float4*>(res)[2 * c + 1];
    v[k][0] = a.x, v[k][1] = a.y, v[k][2] = a.z, v[k][3] = a.w;
    v[k][4] = b.x, v[k][5] = b.y, v[k][6] = b.z, v[k][7] = b.w;
    if (x != nullptr) {
      float xf[8];
      unpack_bf16x8(reinterpret_cast<const uint4*>(x)[c], xf);
#pragma unroll
      for (int e = 0; e < 8; ++e) v[k][e] += xf[e];
    }
    if (res_out != nullptr) {
      reinterpret_cast<float4*>(res_out)[2 * c] = make_float4(v[k][0], v[k][1], v[k][2], v[k][3]);
      reinterpret_cast<float4*>(res_out)[2 * c + 1] = make_float4(v[k][4], v[k][5], v[k][6], v[k][7]);
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) ss += v[k][e] * v[k][e];
  }
  ss = block_sum(ss, red);
  const float inv = rsqrtf(ss / static_cast<float>(p.dim) + p.norm.eps);
  bf16* out = row.out;
#pragma unroll
  for (int k = 0; k < kNormMaxChunks; ++k) {
    const int c = threadIdx.x + k * kNormThreads;
    if (c >= nch) continue;
    reinterpret_cast<uint4*>(out)[c] = rms_norm_pack8(v[k], inv, reinterpret_cast<const uint4*>(p.norm.gamma)[c]);
  }
}

// One warp per head; lane holds dims lane + 32 * j. kD/32 values per lane.
template <int kD>
__global__ void __launch_bounds__(1024) qk_norm_rope_kernel(QkNormRopeParams p) {
  constexpr int kPer = kD / 32;
  const int r = blockIdx.x;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  const int total_heads = p.num_heads + 2 * p.num_kv_heads;
  // Before the wait, what is constant across the step (launch.cuh): the row's slot and position
  // (uploaded with the plan), this lane's rotary cos/sin (the same for every head) and norm
  // weights. Only the projection's output comes from the previous kernel.
  const int slot = p.slot_mapping[r];
  RopeLane<kD> rl;
  rl.load(static_cast<float>(p.positions[r]), p.inv_freq, p.q_norm, p.k_norm);
  pdl_wait_and_release(p.early_release);  // launch.cuh: the qkv rows are written by the previous kernel
  const bf16* row = p.qkv + static_cast<std::int64_t>(r) * total_heads * kD;
  for (int h = warp; h < total_heads; h += nwarps) {
    float v[kPer];
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int d = lane + 32 * j;
      v[j] = __bfloat162float(row[h * kD + d]);
      if (p.bias != nullptr) v[j] = __bfloat162float(__float2bfloat16_rn(v[j] + __bfloat162float(p.bias[h * kD + d])));
    }
    if (h >= p.num_heads + p.num_kv_heads) {  // V head: copy into the page
      if (slot >= 0) {
        bf16* dst = p.v_cache + (static_cast<std::int64_t>(slot) * p.num_kv_heads + (h - p.num_heads - p.num_kv_heads)) * kD;
#pragma unroll
        for (int j = 0; j < kPer; ++j) dst[lane + 32 * j] = __float2bfloat16_rn(v[j]);
      }
      continue;
    }
    const bool is_q = h < p.num_heads;
    float w[kPer];
#pragma unroll
    for (int j = 0; j < kPer; ++j) w[j] = is_q ? rl.wq[j] : rl.wk[j];
    norm_rope_head<kD>(v, w, p.eps, rl);  // device_utils.cuh (the attention levels' rope form too)
    bf16* dst;
    if (is_q) {
      dst = p.q_out + (static_cast<std::int64_t>(r) * p.num_heads + h) * kD;
    } else {
      if (slot < 0) continue;
      dst = p.k_cache + (static_cast<std::int64_t>(slot) * p.num_kv_heads + (h - p.num_heads)) * kD;
    }
#pragma unroll
    for (int j = 0; j < kPer; ++j) dst[lane + 32 * j] = __float2bfloat16_rn(v[j]);
  }
}

__global__ void silu_mul_kernel(SiluMulParams p) {
  pdl_wait();  // launch.cuh: before any read or write of step data
  pdl_release();
  const std::int64_t n = static_cast<std::int64_t>(p.rows) * p.inter;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += stride) {
    const std::int64_t r = idx / p.inter;
    const std::int64_t i = idx - r * p.inter;
    const float g = __bfloat162float(p.gate_up[r * 2 * p.inter + i]);
    const float u = __bfloat162float(p.gate_up[r * 2 * p.inter + p.inter + i]);
    p.out[idx] = __float2bfloat16_rn(silu_mul(g, u));
  }
}

// One block per (row, head), a thread per dim. One pass over the states, kBatch at a time: the
// lse and o loads of a batch are independent, so they are in flight together, and the running
// (max, sum, acc) is rescaled per batch. A loop of one dependent load per state made this kernel
// latency-bound (v5). kBatch is 8, or 16 for more than 8 states: a small-batch decode step
// reserves 16 state slices (split K), which batches of 8 took in two rounds of loads (v7).
template <int kMergeBatch>
__global__ void merge_states_kernel(MergeStatesParams p) {
  pdl_wait_and_release(p.early_release);  // launch.cuh: before any read or write of step data
  const std::int64_t rh = blockIdx.x;  // row * heads + head
  const int d = threadIdx.x;
  const std::int64_t plane = static_cast<std::int64_t>(p.rows) * p.heads;
  const int ns = p.num_states_dev != nullptr ? *p.num_states_dev : p.num_states;
  float m = -INFINITY, den = 0.0f, acc = 0.0f;
  for (int s0 = 0; s0 < ns; s0 += kMergeBatch) {
    float l[kMergeBatch], v[kMergeBatch];
#pragma unroll
    for (int i = 0; i < kMergeBatch; ++i) {
      const int s = s0 + i;
      l[i] = s < ns ? p.lse[s * plane + rh] : -INFINITY;
      v[i] = s < ns && d < p.head_dim ? p.o[(s * plane + rh) * p.head_dim + d] : 0.0f;
    }
    float bm = m;
#pragma unroll
    for (int i = 0; i < kMergeBatch; ++i) bm = fmaxf(bm, l[i]);
    if (!(bm > -INFINITY)) continue;  // nothing but empty states so far
    const float scale = m > -INFINITY ? expf(m - bm) : 0.0f;
    den *= scale;
    acc *= scale;
#pragma unroll
    for (int i = 0; i < kMergeBatch; ++i) {
      if (l[i] > -INFINITY) {  // an empty state (lse -inf) has weight 0 and its o may be anything
        const float w = expf(l[i] - bm);
        den += w;
        acc += w * v[i];
      }
    }
    m = bm;
  }
  if (d < p.head_dim) {
    const float out = den > 0.0f ? acc / den : 0.0f;
    if (p.out != nullptr) p.out[rh * p.head_dim + d] = __float2bfloat16_rn(out);
    if (p.out_o != nullptr) p.out_o[rh * p.head_dim + d] = out;
  }
  if (p.out_lse != nullptr && d == 0) p.out_lse[rh] = m > -INFINITY ? m + logf(den) : -INFINITY;
}

// head_dim 64 and 128: one warp per (row, head), kVec = head_dim / 32 dims per lane, with
// device_utils.cuh's merge_states_warp (states loaded 16 at a time together with their lse, the
// weights from the lanes). One block per (row, head) with a thread per dim spent most of its time
// on CTA turnover at 256 rows x 16 heads (v11).
template <int kVec>
__global__ void __launch_bounds__(32) merge_states_warp_kernel(MergeStatesParams p) {
  using Vec = std::conditional_t<kVec == 4, float4, float2>;
  if (threadIdx.x == 0) timeline::mark(timeline::kMerge, 0);
  pdl_wait_and_release(p.early_release);  // launch.cuh: before any read or write of step data
  if (threadIdx.x == 0) timeline::mark(timeline::kMerge, 2);
  const std::int64_t rh = blockIdx.x;  // row * heads + head
  const int lane = threadIdx.x;
  const std::int64_t plane = static_cast<std::int64_t>(p.rows) * p.heads;
  const int ns = p.num_states_dev != nullptr ? *p.num_states_dev : p.num_states;
  float acc[kVec];
  float m;
  const float den = merge_states_warp<kVec>(
      ns, lane, [&](int s) { return p.lse[s * plane + rh]; },
      [&](int s) { return reinterpret_cast<const Vec*>(p.o + (s * plane + rh) * p.head_dim)[lane]; }, acc, m);
  const float inv = den > 0.0f ? 1.0f / den : 0.0f;
  const std::int64_t at = rh * p.head_dim + lane * kVec;
  if (p.out != nullptr) store_scaled_bf16<kVec>(p.out + at, acc, inv);
  if (p.out_o != nullptr) {
    Vec r;
    float* f = reinterpret_cast<float*>(&r);
#pragma unroll
    for (int k = 0; k < kVec; ++k) f[k] = acc[k] * inv;
    *reinterpret_cast<Vec*>(p.out_o + at) = r;
  }
  if (p.out_lse != nullptr && lane == 0) p.out_lse[rh] = den > 0.0f ? m + logf(den) : -INFINITY;
  if (threadIdx.x == 0) timeline::mark(timeline::kMerge, 5);
}

// ---- sampling ---------------------------------------------------------------------------------

constexpr int kSampleThreads = 1024;

__device__ inline unsigned float_key(float f) {
  const unsigned b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ inline float key_float(unsigned k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// A candidate set: tokens with weight w > 0, w >= min_w, logit >= thr, and inside the nucleus
// bound (key(w) > nk, or key(w) == nk and id <= nid).
struct CandidateSet {
  float thr;
  double min_w;
  unsigned long long nk;
  int nid;
};

struct Crossing {
  unsigned long long key;
  int id;
  double mass;  // cumulative weight through the crossing token
};

__global__ void __launch_bounds__(kSampleThreads) sample_kernel(SampleParams p) {
  pdl_wait();  // launch.cuh: before any read or write of step data
  pdl_release();
  __shared__ double red_d[32];
  __shared__ float red_f[32];
  __shared__ int red_i[32];
  const int row = blockIdx.x;
  const float* x = p.logits + static_cast<std::int64_t>(row) * p.vocab;
  const int V = p.vocab;

  // Argmax, NaN skipped, lowest id on ties; this block scans its share of the row.
  const int nb = p.scan_blocks, part = blockIdx.y;
  float best = -INFINITY;
  int best_id = V;
  if ((V & 3) == 0 && aligned16(x)) {
    // 16-byte loads, several in flight per thread; each thread still visits its ids in ascending
    // order, so ties keep the lowest.
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const int per = (V / 4 + nb - 1) / nb, lo = part * per, hi = min(V / 4, lo + per);
#pragma unroll 4
    for (int j = lo + threadIdx.x; j < hi; j += blockDim.x) {
      const float4 v = __ldg(x4 + j);
      if (v.x > best) { best = v.x; best_id = 4 * j; }
      if (v.y > best) { best = v.y; best_id = 4 * j + 1; }
      if (v.z > best) { best = v.z; best_id = 4 * j + 2; }
      if (v.w > best) { best = v.w; best_id = 4 * j + 3; }
    }
  } else {
    const int per = (V + nb - 1) / nb, lo = part * per, hi = min(V, lo + per);
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
      if (x[i] > best) {
        best = x[i];
        best_id = i;
      }
    }
  }
  block_argmax(best, best_id, red_f, red_i);
  if (nb > 1) {
    // The last block of the row to finish combines the blocks' results in block order (so ties
    // still go to the lowest id) and carries on alone (threadfence + counter).
    if (threadIdx.x == 0) {
      p.scan_v[row * nb + part] = best;
      p.scan_i[row * nb + part] = best_id;
      __threadfence();
    }
    if (!last_block_to_arrive(p.scan_counters + row, nb)) return;
    best = -INFINITY;
    best_id = V;
    for (int b = 0; b < nb; ++b) {
      const float v = __ldcg(p.scan_v + row * nb + b);
      const int id = __ldcg(p.scan_i + row * nb + b);
      if (argmax_better(v, id, best, best_id)) {
        best = v;
        best_id = id;
      }
    }
  }
  if (best_id >= V) {
    if (threadIdx.x == 0) p.out[row] = -1;
    return;
  }
  const float temperature = p.temperature[row];
  if (!(temperature > 0.0f)) {
    if (threadIdx.x == 0) p.out[row] = best_id;
    return;
  }
  const float max_logit = best;
  const bool max_is_inf = isinf(max_logit);
  const double T = temperature;
  auto weight = [&](float v) -> double {
    if (max_is_inf) return v == max_logit ? 1.0 : 0.0;
    if (!(v > -INFINITY)) return 0.0;
    return exp((static_cast<double>(v) - static_cast<double>(max_logit)) / T);
  };
  CandidateSet set;
  set.thr = -INFINITY;
  set.min_w = p.min_p[row] > 0.0f ? fmin(static_cast<double>(p.min_p[row]), 1.0) : 0.0;
  set.nk = 0;
  set.nid = V;
  const int top_k = p.top_k[row];
  if (top_k > 0 && top_k < V) {
    // k-th largest logit (NaN as -inf): the largest key K with count(key >= K) >= k.
    unsigned k = 0;
    for (int bit = 31; bit >= 0; --bit) {
      const unsigned cand = k | (1u << bit);
      int c = 0;
      for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float v = isnan(x[i]) ? -INFINITY : x[i];
        c += float_key(v) >= cand;
      }
      if (block_sum_int(c, red_i) >= top_k) k = cand;
    }
    set.thr = key_float(k);
  }
  // Sum of weights (and count) over the set restricted to key(w) >= lo (and id <= id_hi among
  // key == lo when tie_id is set).
  auto in_set = [&](int i, double& w, unsigned long long& key) -> bool {
    const float v = x[i];
    if (!(v >= set.thr)) return false;
    w = weight(v);
    if (!(w > 0.0) || w < set.min_w) return false;
    key = static_cast<unsigned long long>(__double_as_longlong(w));
    return key > set.nk || (key == set.nk && i <= set.nid);
  };
  auto mass_ge = [&](unsigned long long lo) -> double {
    double s = 0.0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
      double w;
      unsigned long long key;
      if (in_set(i, w, key) && key >= lo) s += w;
    }
    return block_sum_double(s, red_d);
  };
  auto count_eq = [&](unsigned long long k, int id_hi) -> int {
    int c = 0;
    for (int i = threadIdx.x; i < V && i <= id_hi; i += blockDim.x) {
      double w;
      unsigned long long key;
      if (in_set(i, w, key) && key == k) ++c;
    }
    return block_sum_int(c, red_i);
  };
  // The first token in walk order whose cumulative weight reaches (reach) or exceeds target; the
  // set's last token if rounding leaves the target unmet.
  auto cross = [&](double target, bool reach) -> Crossing {
    auto crossed = [&](double cum) { return reach ? cum >= target : cum > target; };
    unsigned long long k = 0;
    for (int bit = 63; bit >= 0; --bit) {
      const unsigned long long cand = k | (1ull << bit);
      if (crossed(mass_ge(cand))) k = cand;
    }
    if (k == 0) {  // unmet: the smallest weight, its highest id
      unsigned long long mn = ~0ull;
      for (int i = threadIdx.x; i < V; i += blockDim.x) {
        double w;
        unsigned long long key;
        if (in_set(i, w, key) && key < mn) mn = key;
      }
      k = block_min_u64(mn, red_d);
    }
    const double wk = __longlong_as_double(static_cast<long long>(k));
    const double above = mass_ge(k + 1);
    const int ties = count_eq(k, V);
    double jd = reach ? ceil((target - above) / wk) : floor((target - above) / wk) + 1.0;
    if (!(jd >= 1.0)) jd = 1.0;
    if (jd > ties) jd = ties;
    const int j = static_cast<int>(jd);
    // The j-th lowest id among the ties: smallest id_hi with count_eq(k, id_hi) >= j.
    int lo = 0, hi = V - 1;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (count_eq(k, mid) >= j) hi = mid; else lo = mid + 1;
    }
    return Crossing{k, lo, above + j * wk};
  };

  double mass = mass_ge(0);
  const float top_p = p.top_p[row];
  if (top_p < 1.0f) {
    const Crossing n = cross(static_cast<double>(top_p) * mass, /*reach=*/true);
    set.nk = n.key;
    set.nid = n.id;
    mass = n.mass;
  }
  const double u = uniform_draw(p.seed[row], p.step[row]);
  const Crossing pick = cross(u * mass, /*reach=*/false);
  if (threadIdx.x == 0) p.out[row] = pick.id;
}

inline int grid_for(std::int64_t n, int threads) {
  const std::int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(b < 1 ? 1 : (b > 65535 * 16 ? 65535 * 16 : b));
}

}  // namespace

cudaError_t launch_convert_f32_to_bf16(const ConvertParams& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  return launch_pdl<convert_kernel>(dim3(grid_for(p.n, 256)), dim3(256), 0, stream, p);
}

cudaError_t launch_fill_f32(float* out, std::int64_t n, float value, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return launch_pdl<fill_kernel>(dim3(grid_for(n, 256)), dim3(256), 0, stream, out, n, value);
}

cudaError_t launch_embedding(const EmbeddingParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  return launch_pdl<embedding_kernel>(dim3(p.rows), dim3(256), 0, stream, p);
}

cudaError_t launch_add_rms_norm(const AddRmsNormParams& p, cudaStream_t stream) {
  static_assert(kNormClearMax <= kNormThreads, "one thread per cleared key");
  if (p.clear_n < 0 || p.clear_n > kNormClearMax || (p.clear_n > 0 && p.clear == nullptr)) return cudaErrorInvalidValue;
  if (p.rows == 0) return cudaSuccess;
  const ResidualNorm& nm = p.norm;
  const bool vec = p.dim % 8 == 0 && p.dim <= kNormThreads * 8 * kNormMaxChunks && aligned16(nm.residual) &&
                   aligned16(p.out) && aligned16(nm.gamma) && aligned16(nm.delta) && aligned16(nm.residual_out);
  if (vec) return launch_pdl<add_rms_norm_vec_kernel>(dim3(p.rows), dim3(kNormThreads), 0, stream, p);
  return launch_pdl<add_rms_norm_kernel>(dim3(p.rows), dim3(kNormThreads), 0, stream, p);
}

cudaError_t launch_qk_norm_rope_kv_write(const QkNormRopeParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  // One warp per head (up to 32 warps), so a row's heads run in parallel instead of 4 warps
  // looping over them (decode batches have few rows: latency, not bandwidth, bounds this kernel).
  const int heads = p.num_heads + 2 * p.num_kv_heads;
  const int threads = 32 * (heads < 32 ? heads : 32);
  if (p.head_dim == 128) {
    return launch_pdl<qk_norm_rope_kernel<128>>(dim3(p.rows), dim3(threads), 0, stream, p);
  }
  if (p.head_dim == 64) {
    return launch_pdl<qk_norm_rope_kernel<64>>(dim3(p.rows), dim3(threads), 0, stream, p);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_silu_mul(const SiluMulParams& p, cudaStream_t stream) {
  const std::int64_t n = static_cast<std::int64_t>(p.rows) * p.inter;
  if (n == 0) return cudaSuccess;
  return launch_pdl<silu_mul_kernel>(dim3(grid_for(n, 256)), dim3(256), 0, stream, p);
}

cudaError_t launch_merge_states(const MergeStatesParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
if (p.head_dim <= 0 || p.head_dim > 1024) return cudaErrorInvalidValue;  // a thread per dim
  const int threads = (p.head_dim + 31) / 32 * 32;
  const dim3 grid(static_cast<unsigned>(p.rows * p.heads));
  static const bool block_per_head = ab_switch_on("CASCADE_MERGE_BLOCK_PER_HEAD");
  // The warp kernel moves float4 / float2 and packed bf16: it needs 16-byte aligned buffers.
  const bool aligned = aligned16(p.o) && aligned16(p.out) && aligned16(p.out_o);
  if (!block_per_head && aligned && (p.head_dim == 128 || p.head_dim == 64)) {
    return p.head_dim == 128 ? launch_pdl<merge_states_warp_kernel<4>>(grid, dim3(32), 0, stream, p)
                             : launch_pdl<merge_states_warp_kernel<2>>(grid, dim3(32), 0, stream, p);
  }
  if (p.num_states_dev != nullptr || p.num_states > 8) {
    return launch_pdl<merge_states_kernel<16>>(grid, dim3(threads), 0, stream, p);
  }
  return launch_pdl<merge_states_kernel<8>>(grid, dim3(threads), 0, stream, p);
}

cudaError_t launch_sample(const SampleParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  if (p.scan_blocks < 1 || p.scan_blocks > kSampleMaxScanBlocks ||
      (p.scan_blocks > 1 && (p.scan_v == nullptr || p.scan_i == nullptr || p.scan_counters == nullptr))) {
    return cudaErrorInvalidValue;
  }
  return launch_pdl<sample_kernel>(dim3(p.rows, p.scan_blocks), dim3(kSampleThreads), 0, stream, p);
}

CASCADE_TIMELINE_ATTACH(timeline::attach_kernels)

}  // namespace cascade::cuda
