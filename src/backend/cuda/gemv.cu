#include "backend/cuda/gemv.h"

#include <cmath>
#include <cstdint>

#include "backend/cuda/device_utils.cuh"
#include "backend/cuda/launch.cuh"

namespace cascade::cuda {
namespace {

constexpr int kWarps = 4;                     // warps per block, one output column each at a time
constexpr int kUnroll = 8;                    // 16-byte loads of w in flight per lane
constexpr int kMaxSmemBytes = 96 * 1024;      // x tile limit (opted in per instantiation)
constexpr int kSmemPerSm = 227 * 1024;        // usable shared memory per SM on sm_90
constexpr int kMaxBlocksPerSm = 2048 / (kWarps * 32);
constexpr int kNormBlocksPerSm = 4;           // grid cap of the kNorm stage with bf16 y (launch_mt)

__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ float2 bf2(std::uint32_t u) {
  __nv_bfloat162 h;
  static_assert(sizeof(h) == sizeof(u));
  __builtin_memcpy(&h, &u, sizeof(u));
  return __bfloat1622float2(h);
}

// acc += dot(w8, x8) over the 8 bf16 of one 16-byte chunk.
__device__ __forceinline__ float dot8(const uint4& w, const uint4& x, float acc) {
  const float2 w0 = bf2(w.x), w1 = bf2(w.y), w2 = bf2(w.z), w3 = bf2(w.w);
  const float2 x0 = bf2(x.x), x1 = bf2(x.y), x2 = bf2(x.z), x3 = bf2(x.w);
  acc = fmaf(w0.x, x0.x, acc);
  acc = fmaf(w0.y, x0.y, acc);
  acc = fmaf(w1.x, x1.x, acc);
  acc = fmaf(w1.y, x1.y, acc);
  acc = fmaf(w2.x, x2.x, acc);
  acc = fmaf(w2.y, x2.y, acc);
  acc = fmaf(w3.x, x3.x, acc);
  acc = fmaf(w3.y, x3.y, acc);
  return acc;
}

// bf16(silu(g) * u) for the 8 pairs of two 16-byte chunks, rounded as the silu_mul kernel rounds.
__device__ __forceinline__ uint4 silu_mul8(const uint4& g, const uint4& u) {
  const unsigned gw[4] = {g.x, g.y, g.z, g.w}, uw[4] = {u.x, u.y, u.z, u.w};
  unsigned out[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 gf = bf2(gw[i]), uf = bf2(uw[i]);
    const __nv_bfloat162 o =
        __floats2bfloat162_rn(silu_mul(gf.x, uf.x), silu_mul(gf.y, uf.y));
    __builtin_memcpy(&out[i], &o, sizeof(o));
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

enum class Stage { kPlain, kGated, kNorm };

// x = bf16(gamma * bf16(h * rsqrt(mean(h²) + eps))) for h = residual + delta, rounded as the
// add+RMSNorm kernels round it (rms_norm_pack8), into xs [MT][K / 8] (rows >= M zero); block 0 writes h to
// residual_out. hs: [M][K] fp32 scratch. Every sum has a fixed order (no shared atomics), so the
// result is the same bits on every run.
template <int MT>
__device__ void stage_norm(const GemvNorm& nm, int M, int K, uint4* xs, float* hs) {
  __shared__ float inv[MT];
  const int nch = K / 8;
  const int total = M * nch;
  const float4* res = reinterpret_cast<const float4*>(nm.residual);
  const uint4* dg = reinterpret_cast<const uint4*>(nm.delta);
  constexpr int kBatch = 2;  // independent (row, chunk) loads in flight per thread (registers: w's are live)
  for (int i0 = threadIdx.x; i0 < total; i0 += kBatch * blockDim.x) {
    float4 a[kBatch], b[kBatch];
    uint4 d[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = i0 + u * blockDim.x;
      if (i < total) {
        int src = i;
        if (nm.row_index != nullptr) {
          const int m = i / nch;
          src = nm.row_index[m] * nch + (i - m * nch);
        }
        a[u] = res[2 * src];
        b[u] = res[2 * src + 1];
        d[u] = dg != nullptr ? dg[src] : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = i0 + u * blockDim.x;
      if (i >= total) continue;
      const float2 d0 = bf2(d[u].x), d1 = bf2(d[u].y), d2 = bf2(d[u].z), d3 = bf2(d[u].w);
      const float4 h0 = make_float4(a[u].x + d0.x, a[u].y + d0.y, a[u].z + d1.x, a[u].w + d1.y);
      const float4 h1 = make_float4(b[u].x + d2.x, b[u].y + d2.y, b[u].z + d3.x, b[u].w + d3.y);
      reinterpret_cast<float4*>(hs)[2 * i] = h0;
      reinterpret_cast<float4*>(hs)[2 * i + 1] = h1;
      if (blockIdx.x == 0 && nm.residual_out != nullptr) {
        reinterpret_cast<float4*>(nm.residual_out)[2 * i] = h0;
        reinterpret_cast<float4*>(nm.residual_out)[2 * i + 1] = h1;
      }
    }
  }
  __syncthreads();
  // Sum of squares per row: every thread over its chunks of the row, then the warps' sums in warp
  // order.
  __shared__ float red[MT][kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m >= M) break;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < nch; c += blockDim.x) {
      const float4 h0 = reinterpret_cast<const float4*>(hs)[2 * (m * nch + c)];
      const float4 h1 = reinterpret_cast<const float4*>(hs)[2 * (m * nch + c) + 1];
      ss += h0.x * h0.x + h0.y * h0.y + h0.z * h0.z + h0.w * h0.w;
      ss += h1.x * h1.x + h1.y * h1.y + h1.z * h1.z + h1.w * h1.w;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if (lane == 0) red[m][warp] = ss;
  }
  __syncthreads();
  if (threadIdx.x < M) {
    float ss = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) ss += red[threadIdx.x][w];
    inv[threadIdx.x] = rsqrtf(ss / static_cast<float>(K) + nm.eps);
  }
  __syncthreads();
  const uint4* gam = reinterpret_cast<const uint4*>(nm.gamma);
  for (int i = threadIdx.x; i < MT * nch; i += blockDim.x) {
    const int m = i / nch, c = i - m * nch;
    if (m >= M) {
      xs[i] = make_uint4(0, 0, 0, 0);
      continue;
    }
    const float4 h0 = reinterpret_cast<const float4*>(hs)[2 * i];
    const float4 h1 = reinterpret_cast<const float4*>(hs)[2 * i + 1];
    const float h[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
    xs[i] = rms_norm_pack8(h, inv[m], gam[c]);
  }
}

// Loads chunks lane + 32 u (u < kCount) of one row of w into wv[kOff + u] (zero past the row).
template <int kOff, int kCount>
__device__ __forceinline__ void load_w(uint4 (&wv)[kUnroll], const __nv_bfloat16* w, int col, int K,
                                       int lane) {
  const uint4* wr = reinterpret_cast<const uint4*>(w + static_cast<std::int64_t>(col) * K);
  const int nch = K / 8;
#pragma unroll
  for (int u = 0; u < kCount; ++u) {
    const int c = lane + u * 32;
    wv[kOff + u] = c < nch ? load_stream(wr + c) : make_uint4(0, 0, 0, 0);
  }
}

// acc[m] += the lane's part of row m of x times the chunks in wv[kOff .. kOff + kCount).
template <int MT, int kOff, int kCount>
__device__ __forceinline__ void dot_w(const uint4 (&wv)[kUnroll], const uint4* xs, int nch, int c0,
                                      float (&acc)[MT]) {
#pragma unroll
  for (int u = 0; u < kCount; ++u) {
    const int c = c0 + u * 32;
    if (c < nch) {
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[m] = dot8(wv[kOff + u], xs[m * nch + c], acc[m]);
    }
  }
}

// After the column loop of a kNorm GEMV with fp32 output: each row's (best, id) over the block's
// warps in warp order, into the parts; the last block to finish combines all blocks' parts and
// writes the ids (sentinel N -> -1) and zeroes the counter for the next call.
template <int MT>
__device__ void argmax_epilogue(const GemvArgmax& am, const float (&best)[MT], const int (&best_id)[MT],
                                int M, int N) {
  __shared__ float red_v[32];
  __shared__ int red_i[32];
  __shared__ float wv[kWarps][MT];
  __shared__ int wi[kWarps][MT];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      wv[warp][m] = best[m];
      wi[warp][m] = best_id[m];
    }
  }
  __syncthreads();
  if (threadIdx.x < M) {
    const int m = threadIdx.x;
    float v = wv[0][m];
    int id = wi[0][m];
    for (int w = 1; w < kWarps; ++w) {
      if (argmax_better(wv[w][m], wi[w][m], v, id)) {
        v = wv[w][m];
        id = wi[w][m];
      }
    }
    am.part_v[m * gridDim.x + blockIdx.x] = v;
    am.part_i[m * gridDim.x + blockIdx.x] = id;
    __threadfence();  // the part is visible before the counter says so
  }
  if (!last_block_to_arrive(am.counter, gridDim.x)) return;
  constexpr int kPer = 8;  // parts per thread loaded together (one round for grids <= 1024)
  const int parts = static_cast<int>(gridDim.x);
  for (int m = 0; m < M; ++m) {
    float v = -INFINITY;
    int id = N;
    for (int b0 = threadIdx.x; b0 < parts; b0 += kPer * blockDim.x) {
      float pv[kPer];
      int pi[kPer];
#pragma unroll
      for (int u = 0; u < kPer; ++u) {
        const int b = b0 + u * blockDim.x;
        pv[u] = b < parts ? __ldcg(am.part_v + m * parts + b) : -INFINITY;
        pi[u] = b < parts ? __ldcg(am.part_i + m * parts + b) : N;
      }
#pragma unroll
      for (int u = 0; u < kPer; ++u) {
        if (argmax_better(pv[u], pi[u], v, id)) {
          v = pv[u];
          id = pi[u];
        }
      }
    }
    block_argmax(v, id, red_v, red_i);
    if (threadIdx.x == 0) am.out[m] = id < N ? id : -1;
  }
}

// MT: rows padded up to 1/2; rows >= M are zero in shared memory and never written.
// stage: how x is formed in shared memory (kPlain: x as given; kGated: silu(gate) * up from the
// gate_up projection's [M, 2K] output, the MLP's down projection without a separate silu_mul
// kernel; kNorm: residual add + RMSNorm from nm, without a separate norm kernel; only kNorm takes
// the argmax epilogue, am.out != nullptr, with y_f32).
template <int MT, Stage stage>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                void* __restrict__ y, bool y_f32, GemvNorm nm, GemvArgmax am, int M, int N, int K,
                bool early_release) {
  if (early_release) pdl_release();  // launch.cuh: early release
  extern __shared__ uint4 xs[];  // [MT][K / 8], then for kNorm [M][K] fp32
  const int nch = K / 8;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  int n = blockIdx.x * kWarps + warp;
  const int stride = gridDim.x * kWarps;
  // Rows of w of at most 32 * kHalf chunks (K <= 1024: the qkv and gate_up projections, lm_head)
  // go two columns at a time, each in one half of wv: a column's loads are issued while the
  // other half is summed (double buffering), so a warp's next column never waits a full memory
  // latency. Longer rows fill wv with one column's first chunks.
  constexpr int kHalf = kUnroll / 2;
  const bool pair = nch <= 32 * kHalf;
  // w is constant across the step: start streaming this warp's first column(s) before waiting on
  // the kernel that produces x (programmatic dependent launch) and before staging x.
  uint4 wv[kUnroll];
  if (pair) {
    if (n < N) load_w<0, kHalf>(wv, w, n, K, lane);
    if (n + stride < N) load_w<kHalf, kHalf>(wv, w, n + stride, K, lane);
  } else if (n < N) {
    load_w<0, kUnroll>(wv, w, n, K, lane);
  }
  pdl_wait();  // x is written and y's last readers are done (launch.cuh)
  if (!early_release) pdl_release();
  const uint4* xg = reinterpret_cast<const uint4*>(x);
  if constexpr (stage == Stage::kNorm) {
    stage_norm<MT>(nm, M, K, xs, reinterpret_cast<float*>(xs + MT * nch));
  } else if constexpr (stage == Stage::kPlain) {
    for (int i = threadIdx.x; i < MT * nch; i += blockDim.x) {
      const int m = i / nch;
      xs[i] = m < M ? xg[i] : make_uint4(0, 0, 0, 0);
    }
  } else {
    for (int i = threadIdx.x; i < MT * nch; i += blockDim.x) {
      const int m = i / nch, c = i - m * nch;
      xs[i] = m < M ? silu_mul8(xg[2 * m * nch + c], xg[2 * m * nch + nch + c]) : make_uint4(0, 0, 0, 0);
    }
  }
  __syncthreads();
  // Greedy argmax (kNorm only): every lane holds the full sums, so each keeps the warp's best;
  // a warp visits its columns in ascending order, so a strict > keeps the lowest id on ties.
  constexpr bool kArgmax = stage == Stage::kNorm;
  const bool argmax = kArgmax && am.out != nullptr;
  float best[MT];
  int best_id[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    best[m] = -INFINITY;
    best_id[m] = N;
  }
  // Column col's sums: butterfly, lane m writes row m, the running argmax.
  auto finish = [&](float (&acc)[MT], int col) {
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], off);
    }
    // Lane m writes row m (all lanes hold the full sums after the butterfly).
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (lane == m && m < M) {
        const std::int64_t idx = static_cast<std::int64_t>(m) * N + col;
        if (y_f32) {
          static_cast<float*>(y)[idx] = acc[m];
        } else {
          static_cast<__nv_bfloat16*>(y)[idx] = __float2bfloat16_rn(acc[m]);
        }
      }
      if (kArgmax && argmax && acc[m] > best[m]) {
        best[m] = acc[m];
        best_id[m] = col;
      }
    }
  };
  if (pair) {
    // Columns n, n + stride, n + 2 stride, ... (ascending, as the argmax needs), alternately in
    // the two halves of wv; each half is refilled with the column after next once summed.
    for (; n < N; n += 2 * stride) {
      float acc[MT];
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[m] = 0.0f;
      dot_w<MT, 0, kHalf>(wv, xs, nch, lane, acc);
      if (n + 2 * stride < N) load_w<0, kHalf>(wv, w, n + 2 * stride, K, lane);
      finish(acc, n);
      if (n + stride >= N) break;
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[m] = 0.0f;
      dot_w<MT, kHalf, kHalf>(wv, xs, nch, lane, acc);
      if (n + 3 * stride < N) load_w<kHalf, kHalf>(wv, w, n + 3 * stride, K, lane);
      finish(acc, n + stride);
    }
  } else {
    bool prefetched = true;
    for (; n < N; n += stride) {
      const uint4* wr = reinterpret_cast<const uint4*>(w + static_cast<std::int64_t>(n) * K);
      float acc[MT];
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[m] = 0.0f;
      for (int c0 = lane; c0 < nch; c0 += 32 * kUnroll) {
        if (!prefetched) {
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            const int c = c0 + u * 32;
            wv[u] = c < nch ? load_stream(wr + c) : make_uint4(0, 0, 0, 0);
          }
        }
        prefetched = false;
        dot_w<MT, 0, kUnroll>(wv, xs, nch, c0, acc);
      }
      finish(acc, n);
    }
  }
  if constexpr (kArgmax) {
    if (argmax) argmax_epilogue<MT>(am, best, best_id, M, N);
  }
}

int padded_rows(int M) { return M <= 1 ? 1 : 2; }

int gemv_smem(int MT, int M, int K, bool norm) { return MT * K * 2 + (norm ? M * K * 4 : 0); }

template <int MT, Stage stage>
cudaError_t launch_mt(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32,
                      const GemvNorm& nm, const GemvArgmax& am, int M, int N, int K, int sm_count,
                      cudaStream_t stream, bool early_release) {
  const int smem = gemv_smem(MT, M, K, stage == Stage::kNorm);
  if (smem + 1024 > 48 * 1024) {  // with headroom for the kernel's static shared memory
    // Opt in to more than 48 KB of dynamic shared memory, once per instantiation and only when a
    // shape needs it (Qwen3-0.6B's decode shapes stay within 48 KB).
    static const cudaError_t attr_err = cudaFuncSetAttribute(
        gemv_kernel<MT, stage>, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmemBytes);
    if (attr_err != cudaSuccess) return attr_err;
  }
  // The grid: one wave of resident blocks, as limited by registers (once per instantiation) and
  // shared memory; more columns are taken grid-stride. (A grid of up to 16 blocks per SM, set by
  // shared memory and threads alone, made the batch-1 step ~6% slower: more blocks each staging x,
  // and each forming the norm of the kNorm stage, v6.)
  static const int reg_limit = [] {
    int n = 0;
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, gemv_kernel<MT, stage>, kWarps * 32, 0) == cudaSuccess && n > 0
               ? n
               : kMaxBlocksPerSm;
  }();
  int per_sm = kSmemPerSm / (smem + 1024);  // 1 KB reserved per block by the hardware
  per_sm = per_sm < 1 ? 1 : (per_sm > reg_limit ? reg_limit : per_sm);
  const std::int64_t need = (static_cast<std::int64_t>(N) + kWarps - 1) / kWarps;
  const std::int64_t sms = sm_count > 0 ? sm_count : 1;
  // Every block of the kNorm stage forms the whole norm itself: for the layer projections 4
  // blocks per SM instead of the 7 that registers allow measured 3% faster at batch 1 and 2 (1 and
  // 2 per SM were 8% and 32% slower: too few columns streaming at once; v6). lm_head (fp32
  // logits; ~40 columns per warp at Qwen3-0.6B's vocab) keeps the register limit: capped, it lost
  // more than the norm kernel it replaced (v7). Other shapes were not measured either way.
  if constexpr (stage == Stage::kNorm) {
    if (!y_f32 && per_sm > kNormBlocksPerSm) per_sm = kNormBlocksPerSm;
  }
  const std::int64_t resident = sms * per_sm;
  const int grid = static_cast<int>(need < resident ? need : resident);
  // Programmatic dependent launch (launch.cuh): this grid may start while the previous kernel in
  // the stream finishes; it streams its first columns of w, then waits before touching x or y.
  return launch_pdl<gemv_kernel<MT, stage>>(dim3(grid), dim3(kWarps * 32), static_cast<std::size_t>(smem),
                                            stream, x, w, y, y_f32, nm, am, M, N, K, early_release);
}

}  // namespace

bool gemv_supported(const __nv_bfloat16* x, const __nv_bfloat16* w, int M, int K) {
  if (M < 1 || M > kGemvMaxM || K < 8 || K % 8 != 0) return false;
  if (reinterpret_cast<std::uintptr_t>(x) % 16 != 0 || reinterpret_cast<std::uintptr_t>(w) % 16 != 0)
    return false;
  return static_cast<std::int64_t>(padded_rows(M)) * K * 2 <= kMaxSmemBytes;
}

namespace {

template <Stage stage>
cudaError_t launch_any(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32,
                       const GemvNorm& nm, int M, int N, int K, int sm_count, cudaStream_t stream,
                       const GemvArgmax& am = {}, bool early_release = false) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  switch (padded_rows(M)) {
    case 1: return launch_mt<1, stage>(x, w, y, y_f32, nm, am, M, N, K, sm_count, stream, early_release);
    default: return launch_mt<2, stage>(x, w, y, y_f32, nm, am, M, N, K, sm_count, stream, early_release);
  }
}

}  // namespace

cudaError_t launch_gemv(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int M,
                        int N, int K, int sm_count, cudaStream_t stream) {
  return launch_any<Stage::kPlain>(x, w, y, y_f32, {}, M, N, K, sm_count, stream);
}

cudaError_t launch_gemv_silu(const __nv_bfloat16* gate_up, const __nv_bfloat16* w, __nv_bfloat16* y, int M,
                             int N, int K, int sm_count, cudaStream_t stream, bool early_release) {
  return launch_any<Stage::kGated>(gate_up, w, y, false, {}, M, N, K, sm_count, stream, {}, early_release);
}

bool gemv_norm_supported(const GemvNorm& nm, const __nv_bfloat16* w, const void* y, bool y_f32, int M,
                         int N, int K) {
  if (!gemv_supported(nm.gamma, w, M, K) || nm.residual == nullptr || nm.gamma == nullptr) return false;
  if (nm.row_index != nullptr && (nm.residual_out != nullptr || nm.src_rows < 1)) return false;
  const auto misaligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 != 0; };
  if (misaligned(nm.residual) || misaligned(nm.residual_out) || misaligned(nm.delta)) return false;
  // Every block reads all of residual and delta while some block writes y and block 0 writes
  // residual_out: an overlap between what is written and what is read would be a race.
  struct Span {
    std::uintptr_t begin, end;
  };
  const auto span = [](const void* p, std::int64_t bytes) {
    const auto b = reinterpret_cast<std::uintptr_t>(p);
    return Span{b, p == nullptr ? b : b + static_cast<std::uintptr_t>(bytes)};
  };
  const auto overlap = [](Span a, Span b) { return a.begin < b.end && b.begin < a.end; };
  const std::int64_t rows = static_cast<std::int64_t>(M) * K;
  const std::int64_t src = static_cast<std::int64_t>(nm.row_index != nullptr ? nm.src_rows : M) * K;
  const Span read[] = {span(nm.residual, src * 4), span(nm.delta, src * 2)};
  const Span written[] = {span(y, static_cast<std::int64_t>(M) * N * (y_f32 ? 4 : 2)),
                          span(nm.residual_out, rows * 4)};
  for (const Span& r : read) {
    for (const Span& wr : written) {
      if (overlap(r, wr)) return false;
    }
  }
  return gemv_smem(padded_rows(M), M, K, true) <= kMaxSmemBytes;
}

cudaError_t launch_gemv_norm(const GemvNorm& nm, const __nv_bfloat16* w, void* y, bool y_f32, int M, int N,
                             int K, int sm_count, cudaStream_t stream, const GemvArgmax* argmax,
                             bool early_release) {
  if (argmax != nullptr && !y_f32) return cudaErrorInvalidValue;
  return launch_any<Stage::kNorm>(nullptr, w, y, y_f32, nm, M, N, K, sm_count, stream,
                                  argmax != nullptr ? *argmax : GemvArgmax{}, early_release);
}

int gemv_argmax_parts(int M, int sm_count) {
  return M * (sm_count > 0 ? sm_count : 1) * kMaxBlocksPerSm;
}

}  // namespace cascade::cuda
