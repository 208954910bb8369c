#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/device_utils.cuh"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/skinny_gemm.h"
#include "backend/cuda/wgmma.cuh"

namespace cascade::cuda {
namespace {

constexpr int kBN = 64;       // rows of w per CTA: the wgmma M side
constexpr int kBM = 64;       // rows of x (zero-padded): the wgmma N side
constexpr int kBK = 64;       // K per chunk: one 128-byte swizzle row of bf16
// Ring depth: kStages - 1 chunks in flight, three from before the PDL wait. Four stages (65 KB)
// leave room for a third CTA on an SM (the next kernel's, under PDL); five (81 KB, all four
// chunks of a qkv or o_proj CTA ahead of the wait) made batch 8-32 decode steps 3-8% slower.
constexpr int kStages = 4;
constexpr int kThreads = 128;  // one warpgroup
constexpr int kWBytes = kBN * kBK * 2;
constexpr int kXBytes = kBM * kBK * 2;
constexpr int kStageBytes = kWBytes + kXBytes;  // a stage: the w chunk, then the x chunk
constexpr int kSmem = kStages * kStageBytes + 1024;  // + slack to align the ring to 1024 bytes
constexpr int kMaxSplits = 8;  // split-K CTAs of a tile form one cluster (portable size)

// Fusion modes (SkinnyFusion; one kernel instantiation each, so the plain product carries none
// of the fused forms' code).
// kArgmax: the plain product with fp32 y and each row's greedy argmax (SkinnyArgmax).
enum Fuse : int { kPlain = 0, kResidual = 1, kNorm = 2, kNormGated = 3, kArgmax = 4 };

struct SkinnyParams {
  const __nv_bfloat16* x;
  const __nv_bfloat16* w;
  void* y;
  int M, N, K;  // N: columns of y (gated: w has 2N rows)
  int chunks_per_split, splits;
  bool y_f32;
  SkinnyFusion f;
};
// The argmax form's parameters: its buffers ride only in its own instantiation (in every form's
// parameters they cost the other forms up to 6 registers, ptxas sm_90a).
struct SkinnyArgmaxParams : SkinnyParams {
  SkinnyArgmax am;
};
template <int kF>
using KernelParams = std::conditional_t<kF == kArgmax, SkinnyArgmaxParams, SkinnyParams>;

// Shared memory after the main loop, in the ring: the split-K partial tile (16 KB at 0, read by
// the cluster) and, at 16 KB, the residual epilogue's per-warp row sums of squares ([8 j][4
// warps][8] fp32) or the argmax epilogue's per-warp row keys ([4 warps][64] u64).
constexpr int kSqOffset = 16384;
static_assert(kSqOffset >= 8 * kThreads * 16, "the split-K partial tile fits below the row sums / keys");
static_assert(kSqOffset + 4 * kBM * 8 <= kStages * kStageBytes, "the argmax keys fit in the ring");

#ifdef CASCADE_SM90A
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n"
               "barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
__device__ __forceinline__ unsigned cluster_rank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
// 16 bytes at a shared-memory address of CTA `rank` of the cluster.
__device__ __forceinline__ float4 ld_cluster_f4(std::uint32_t addr, unsigned rank) {
  std::uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(addr), "r"(rank));
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(remote)
               : "memory");
  return v;
}

// silu(g) * u as silu_mul_kernel forms it, from the bf16 roundings of the two projections.
__device__ __forceinline__ __nv_bfloat16 silu_mul_bf16(float gate, float up) {
  const float g = __bfloat162float(__float2bfloat16_rn(gate));
  const float u = __bfloat162float(__float2bfloat16_rn(up));
  return __float2bfloat16_rn(silu_mul(g, u));
}

// A logit's greedy-argmax key (SkinnyArgmax): larger keys are larger values, ties the lower id;
// 0 for NaN and -inf, which the sampler's greedy rule never picks. -0 counts as +0 (they compare
// equal, so the lower id must win between them).
__device__ __forceinline__ unsigned long long argmax_key(float v, int id) {
  if (!(v > -INFINITY)) return 0ull;
  const unsigned u = __float_as_uint(v == 0.0f ? 0.0f : v);
  const unsigned ord = (u & 0x80000000u) != 0u ? ~u : (u | 0x80000000u);
  return (static_cast<unsigned long long>(ord) << 32) | (0xffffffffu - static_cast<unsigned>(id));
}

// The tile's results come in groups of four: thread t's accumulators 4j..4j+3 are D[n][m],
// D[n][m + 1], D[n + 8][m], D[n + 8][m + 1] with n (a row of w in the tile) = warp * 16 +
// lane / 4 and m (a row of x) = j * 8 + (lane % 4) * 2 (the wgmma accumulator layout).
struct Group {
  int n, m;  // element 0's row of w in the tile and row of x; element e is (n + 8 * (e / 2), m + e % 2)
};
__device__ __forceinline__ Group group_of(int t, int j) {
  return {(t >> 5) * 16 + ((t & 31) >> 2), j * 8 + (t & 3) * 2};
}

// The residual epilogue's inputs of a group (residual at its four elements, gamma at its two
// columns), loaded ahead of the split-K sum, which they do not depend on.
struct ResidualIn {
  float r[4];
  float g[2];
};
__device__ __forceinline__ ResidualIn load_residual(const SkinnyParams& p, int tile, int t, int j) {
  ResidualIn in{};
  const Group g = group_of(t, j);
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int n = tile * kBN + g.n + (e >> 1) * 8, m = g.m + (e & 1);
    if (n < p.N && m < p.M) in.r[e] = p.f.residual[static_cast<std::int64_t>(m) * p.N + n];
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int n = tile * kBN + g.n + h * 8;
    if (n < p.N) in.g[h] = __bfloat162float(p.f.gamma[n]);
  }
  return in;
}

// Writes group j of thread t of the tile, v its final sums, as fusion mode kF asks: the residual
// epilogue (in: load_residual's values), or the folded norm's row scales applied, then gated or
// plain out (bf16, or fp32 for a plain product with y_f32). Returns the residual epilogue's h² summed over the group's two columns, for
// its rows m and m + 1 (zero outside y; zero in the other modes).
template <int kF>
__device__ __forceinline__ float2 finish_group(const SkinnyParams& p, int tile, int t, int j, float4 v,
                                               const ResidualIn& in, const float* scale) {
  float sq[2] = {0.0f, 0.0f};
  const Group g = group_of(t, j);
  if constexpr (kF == kNorm || kF == kNormGated) {
    const float s0 = scale[g.m], s1 = scale[g.m + 1];
    v.x *= s0, v.y *= s1, v.z *= s0, v.w *= s1;
  }
  __nv_bfloat16* const y = static_cast<__nv_bfloat16*>(p.y);
  if constexpr (kF == kNormGated) {
    // Rows n and n + 8 of the tile are the gate and up rows of one column of y.
    const int col = tile * 32 + (t >> 5) * 8 + ((t & 31) >> 2);
    if (col >= p.N) return make_float2(0.0f, 0.0f);
    if (g.m < p.M) y[static_cast<std::int64_t>(g.m) * p.N + col] = silu_mul_bf16(v.x, v.z);
    if (g.m + 1 < p.M) y[static_cast<std::int64_t>(g.m + 1) * p.N + col] = silu_mul_bf16(v.y, v.w);
  } else {
    const float vals[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int tn = g.n + (e >> 1) * 8, m = g.m + (e & 1);
      const int n = tile * kBN + tn;
      if (n >= p.N || m >= p.M) continue;
      const std::int64_t o = static_cast<std::int64_t>(m) * p.N + n;
      if constexpr (kF == kResidual) {
        // h = residual + bf16(y); the next GEMM's input bf16(h * gamma); h² for the row sums.
        const float h = in.r[e] + __bfloat162float(__float2bfloat16_rn(vals[e]));
        p.f.residual_out[o] = h;
        p.f.x_out[o] = __float2bfloat16_rn(h * in.g[e >> 1]);
        sq[e & 1] += h * h;
      } else if (p.y_f32) {
        if (kF != kArgmax || p.y != nullptr) static_cast<float*>(p.y)[o] = vals[e];  // argmax: y optional
      } else {
        y[o] = __float2bfloat16_rn(vals[e]);
      }
    }
  }
  return make_float2(sq[0], sq[1]);
}

// Row sums of squares of group j (rows 8j..8j+7 of x) over the warp's 16 columns of the tile:
// lanes with the same lane % 4 share rows, so three shuffles over lane / 4 (a fixed tree), then
// lanes 0-3 leave rows 8j + 2 * lane and + 1 in part[warp][8] for the cross-warp sum.
__device__ __forceinline__ void warp_row_squares(float2 sq, float* part, int tid) {
#pragma unroll
  for (int o = 4; o < 32; o <<= 1) {
    sq.x += __shfl_xor_sync(0xffffffffu, sq.x, o);
    sq.y += __shfl_xor_sync(0xffffffffu, sq.y, o);
  }
  const int lane = tid & 31;
  if (lane < 4) {
    part[(tid >> 5) * 8 + lane * 2] = sq.x;
    part[(tid >> 5) * 8 + lane * 2 + 1] = sq.y;
  }
}
#endif

template <int kF>
__global__ void __launch_bounds__(kThreads, 2) skinny_gemm_kernel(KernelParams<kF> p) {
#ifdef CASCADE_SM90A
  constexpr bool kGated = kF == kNormGated;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const std::uint32_t raw = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem_raw));
  const std::uint32_t ring = (raw + 1023u) & ~1023u;  // the swizzle pattern follows address bits 4-9
  unsigned char* const ring_ptr = smem_raw + (ring - raw);
  const int tid = threadIdx.x;
  const int tile = blockIdx.x, split = blockIdx.y;
  const int n0 = tile * kBN;
  const int chunks = (p.K + kBK - 1) / kBK;
  const int c_begin = split * p.chunks_per_split;
  const int nc = min(p.chunks_per_split, chunks - c_begin);

  // A staged chunk of R rows is R rows of 128 bytes; element (r, k) sits in row r, 16-byte unit
  // (k / 8) ^ (r % 8) (the 128-byte swizzle). Thread tid stages units tid + j * 128.
  const auto unit_offset = [](int r, int u) { return r * 128 + ((u ^ (r & 7)) << 4); };
  auto load_w = [&](int c, int s) {
    const std::uint32_t dst = ring + s * kStageBytes;
    const int k0 = (c_begin + c) * kBK;
#pragma unroll
    for (int j = 0; j < kBN * 8 / kThreads; ++j) {
      const int i = tid + j * kThreads;
      const int r = i >> 3, u = i & 7;
      int n = n0 + r;
      int rows = p.N;
      if constexpr (kGated) {
        // The tile's row r is the gate row (r % 16 < 8) or the up row of column
        // tile * 32 + (r / 16) * 8 + r % 8 of y; w holds the N gate rows, then the N up rows.
        const int col = tile * 32 + (r >> 4) * 8 + (r & 7);
        rows = 2 * p.N;
        n = col >= p.N ? rows : (r & 8) != 0 ? p.N + col : col;
      }
      const int k = k0 + u * 8;
      const bool ok = n < rows && k < p.K;
      cp_async16(dst + unit_offset(r, u), ok ? p.w + static_cast<std::int64_t>(n) * p.K + k : p.w, ok);
    }
  };
  auto load_x = [&](int c, int s) {
    const std::uint32_t dst = ring + s * kStageBytes + kWBytes;
    const int k0 = (c_begin + c) * kBK;
#pragma unroll
    for (int j = 0; j < kBM * 8 / kThreads; ++j) {
      const int i = tid + j * kThreads;
      const int r = i >> 3, u = i & 7;
      const int k = k0 + u * 8;
      const bool ok = r < p.M && k < p.K;
      cp_async16(dst + unit_offset(r, u), ok ? p.x + static_cast<std::int64_t>(r) * p.K + k : p.x, ok);
    }
  };
  // Commit groups: w of chunks 0..kStages-2 (before the wait: weights are constant), then x of
  // the same chunks, then one group per iteration (w and x of the chunk kStages - 1 ahead,
  // possibly empty), so chunk c's data is complete when at most kStages - 2 groups are pending
  // at iteration c. The refill goes to the stage chunk c - 1 used, before chunk c's wgmmas.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nc) load_w(s, s);
    cp_async_commit();
  }
  pdl_wait();  // launch.cuh: x is written by the previous kernel
  pdl_release();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nc) load_x(s, s);
    cp_async_commit();
  }
  // The folded norm's per-tile sums of squares of this thread's row (threads 0-63), requested
  // now and summed after the main loop: all loads in flight at once, none waited on before the
  // loop (a loop of dependent loads here held the CTA up by microseconds).
  constexpr bool kScaled = kF == kNorm || kF == kNormGated;
  constexpr int kSsqAhead = 16;  // tiles loaded ahead (a hidden size of 1024); the rest later
  float ssq_ahead[kScaled ? kSsqAhead : 1];
  if constexpr (kScaled) {
#pragma unroll
    for (int t = 0; t < kSsqAhead; ++t) {
      ssq_ahead[t] = tid < p.M && t < p.f.ssq_tiles ? p.f.ssq_in[t * p.M + tid] : 0.0f;
    }
  }

  float acc[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) acc[i] = 0.0f;
  for (int c = 0; c < nc; ++c) {
    cp_async_wait<kStages - 2>();
    fence_proxy_async_smem();
    __syncthreads();  // every thread's part of chunk c landed; chunk c - 1's wgmmas are done
    const int ahead = c + kStages - 1;
    if (ahead < nc) {
      load_w(ahead, ahead % kStages);
      load_x(ahead, ahead % kStages);
    }
    cp_async_commit();
    const std::uint32_t ws = ring + (c % kStages) * kStageBytes;
    fence_operands(acc);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      wgmma_m64n64k16_ss(acc, sw128_kmajor_desc(ws + kk * 32), sw128_kmajor_desc(ws + kWBytes + kk * 32));
    }
    wgmma_commit();
    wgmma_wait_all();
    fence_operands(acc);
  }
  cp_async_wait<0>();

  // The folded norm's row scales, rsqrt(mean of h² + eps), tiles summed in order.
  __shared__ float scale[kScaled ? kBM : 1];
  if constexpr (kScaled) {
    if (tid < kBM) {
      float ss = 0.0f;
#pragma unroll
      for (int t = 0; t < kSsqAhead; ++t) ss += ssq_ahead[t];
      if (tid < p.M) {
        for (int t = kSsqAhead; t < p.f.ssq_tiles; ++t) ss += p.f.ssq_in[t * p.M + tid];
      }
      scale[tid] = rsqrtf(ss / static_cast<float>(p.K) + p.f.eps);
    }
  }
  __syncthreads();  // every warp's wgmmas are done with the ring; the scales are visible
  const float* const scale_ptr = scale;
  // Split-K: the tile's CTAs are one cluster, and its groups j (rows 8j..8j+7 of x, all 64
  // columns; group_of) are split among them whole, so each CTA finishes complete rows: CTA r of
  // S takes j in [8r / S, 8(r + 1) / S) and sums those groups over the CTAs in rank order.
  const int S = p.splits;
  const int r = S > 1 ? static_cast<int>(cluster_rank()) : 0;
  const int j_begin = r * 8 / S, j_end = (r + 1) * 8 / S;
  if (S > 1) {
    // Each CTA leaves its partial tile in its own shared memory (as float4 [j][thread]).
    float4* mine = reinterpret_cast<float4*>(ring_ptr);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      mine[j * kThreads + tid] = make_float4(acc[4 * j], acc[4 * j + 1], acc[4 * j + 2], acc[4 * j + 3]);
    }
  }
  // The residual epilogue's inputs, requested before the cluster barrier.
  ResidualIn in[8];
  if constexpr (kF == kResidual) {
#pragma unroll
    for (int g = 0; g < 8; ++g) {
      if (j_begin + g < j_end) in[g] = load_residual(p, tile, tid, j_begin + g);
    }
  }
  if (S > 1) cluster_sync();
  float* const part = reinterpret_cast<float*>(ring_ptr + kSqOffset);
#pragma unroll
  for (int g = 0; g < 8; ++g) {
    const int j = j_begin + g;
    if (j >= j_end) break;
    // Without split-K j_begin is 0, so j is g (a constant index keeps acc in registers).
    float4 v = make_float4(acc[4 * g], acc[4 * g + 1], acc[4 * g + 2], acc[4 * g + 3]);
    if (S > 1) {
      // The split-K sum over the cluster's CTAs in rank order (the same bits whatever the timing).
      const std::uint32_t a = ring + (j * kThreads + tid) * 16;
      v = ld_cluster_f4(a, 0);
      for (int src = 1; src < S; ++src) {
        const float4 o = ld_cluster_f4(a, static_cast<unsigned>(src));
        v.x += o.x;
        v.y += o.y;
        v.z += o.z;
        v.w += o.w;
      }
    }
    const float2 sq = finish_group<kF>(p, tile, tid, j, v, in[g], scale_ptr);
    if constexpr (kF == kResidual) warp_row_squares(sq, part + j * 32, tid);
    if constexpr (kF == kArgmax) {
      // Rows m and m + 1 of x over this thread's rows n and n + 8 of w, then over the warp's 16
      // (lanes with the same lane % 4 share m); lanes 0-3 leave the warp's keys of rows 8j..8j+7.
      const Group gr = group_of(tid, j);
      const int id0 = tile * kBN + gr.n, id1 = id0 + 8;
      unsigned long long k0 = max(id0 < p.N ? argmax_key(v.x, id0) : 0ull, id1 < p.N ? argmax_key(v.z, id1) : 0ull);
      unsigned long long k1 = max(id0 < p.N ? argmax_key(v.y, id0) : 0ull, id1 < p.N ? argmax_key(v.w, id1) : 0ull);
#pragma unroll
      for (int o = 4; o < 32; o <<= 1) {
        k0 = max(k0, __shfl_xor_sync(0xffffffffu, k0, o));
        k1 = max(k1, __shfl_xor_sync(0xffffffffu, k1, o));
      }
      unsigned long long* const wk = reinterpret_cast<unsigned long long*>(ring_ptr + kSqOffset) + (tid >> 5) * kBM;
      if ((tid & 31) < 4) {
        wk[gr.m] = k0;
        wk[gr.m + 1] = k1;
      }
    }
  }
  if constexpr (kF == kResidual) {
    // The tile's part of each of the CTA's rows' sum of squares: the four warps' sums in order.
    __syncthreads();
    const int j = j_begin + tid / 8, m = j * 8 + tid % 8;
    if (j < j_end && m < p.M) {
      const float* row = part + j * 32 + tid % 8;
      p.f.ssq_out[tile * p.M + m] = ((row[0] + row[8]) + row[16]) + row[24];
    }
  }
  if (S > 1) cluster_sync();  // no CTA leaves while another still reads its shared memory
  if constexpr (kF == kArgmax) {
    // Each of the CTA's rows: the four warps' keys, one atomic max into the row's key (a
    // reduction whose result nobody waits for: no fence, no counter, the CTA just leaves).
    __syncthreads();
    const unsigned long long* const wk = reinterpret_cast<const unsigned long long*>(ring_ptr + kSqOffset);
    const int m = tid;
    if (m < p.M && m / 8 >= j_begin && m / 8 < j_end) {
      const unsigned long long k = max(max(wk[m], wk[kBM + m]), max(wk[2 * kBM + m], wk[3 * kBM + m]));
      if (k != 0ull) atomicMax(p.am.keys + m, k);
    }
  }
#else
  __trap();  // launch_skinny_gemm refuses devices without this kernel's sm_90a code
#endif
}

__global__ void sm90a_probe_kernel(int* out) {
#ifdef CASCADE_SM90A
  *out = 1;
#else
  *out = 0;
#endif
}

// Whether the current device runs the library's sm_90a code (every .cu file is compiled for the
// same architectures): compute capability 9.0 and a one-thread probe kernel that reports having
// been compiled with it.
bool probe_current_device() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess ||
      major != 9 || minor != 0) {
    return false;
  }
  int* d = nullptr;
  if (cudaMalloc(&d, sizeof(int)) != cudaSuccess) return false;
  int h = 0;
  sm90a_probe_kernel<<<1, 1>>>(d);
  const bool launched = cudaGetLastError() == cudaSuccess;  // also clears a launch error
  const bool copied = launched && cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess;
  cudaFree(d);
  return copied && h == 1;
}

}  // namespace

bool sm90a_code_available() {
  // Per device ordinal: 0 not yet probed, 1 available, -1 not. Read without a lock, since every
  // skinny launch asks; a first probe on two threads at once gives the same answer twice.
  constexpr int kMaxDevices = 64;
  static std::atomic<signed char> known[kMaxDevices];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (dev < 0 || dev >= kMaxDevices) return probe_current_device();
  const signed char k = known[dev].load(std::memory_order_relaxed);
  if (k != 0) return k > 0;
  const bool ok = probe_current_device();
  known[dev].store(ok ? 1 : -1, std::memory_order_relaxed);
  return ok;
}

bool skinny_gemm_available() { return sm90a_code_available(); }

bool skinny_gemm_supported(const __nv_bfloat16* x, const __nv_bfloat16* w, int M, int N, int K) {
  return M >= kSkinnyMinM && M <= kSkinnyMaxM && N >= 1 && K >= 8 && K % 8 == 0 && aligned16(x) &&
         aligned16(w);
}

namespace {

template <int kF>
cudaError_t launch_mode(const KernelParams<kF>& p, int tiles, cudaStream_t stream) {
  // The shared-memory opt-in, once per process and mode (thread-safe static initialisation).
  static const cudaError_t attr_err =
      cudaFuncSetAttribute(skinny_gemm_kernel<kF>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (attr_err != cudaSuccess) return attr_err;
  // The split-K CTAs of a tile are one cluster.
  return launch_pdl_cluster<skinny_gemm_kernel<kF>>(dim3(tiles, p.splits), dim3(kThreads), kSmem, stream,
                                                    dim3(1, p.splits, 1), p);
}

cudaError_t launch_kernel(const SkinnyParams& p, const SkinnyArgmax& am, int tiles, cudaStream_t stream) {
  if (am.keys != nullptr) return launch_mode<kArgmax>(SkinnyArgmaxParams{p, am}, tiles, stream);
  if (p.f.residual != nullptr) return launch_mode<kResidual>(p, tiles, stream);
  if (p.f.ssq_in != nullptr) {
    return p.f.gated ? launch_mode<kNormGated>(p, tiles, stream) : launch_mode<kNorm>(p, tiles, stream);
  }
  return launch_mode<kPlain>(p, tiles, stream);
}

cudaError_t launch_skinny(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int M,
                          int N, int K, const SkinnyFusion& f, int target_ctas, cudaStream_t stream,
                          const SkinnyArgmax& am = {}) {
  if (!skinny_gemm_available()) return cudaErrorNotSupported;
  const int tiles = f.gated ? (N + 31) / 32 : (N + kBN - 1) / kBN;
  const int chunks = (K + kBK - 1) / kBK;
  // As many splits as keep the grid within target_ctas (at most a cluster's worth, one chunk
  // each at least), then the fewest splits that give the same chunks per split.
  int splits = std::clamp(target_ctas / tiles, 1, std::min(kMaxSplits, chunks));
  const int per_split = (chunks + splits - 1) / splits;
  splits = (chunks + per_split - 1) / per_split;
  const SkinnyParams p{x, w, y, M, N, K, per_split, splits, y_f32, f};
  return launch_kernel(p, am, tiles, stream);
}

}  // namespace

cudaError_t launch_skinny_gemm(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32,
                               int M, int N, int K, int target_ctas, cudaStream_t stream) {
  return launch_skinny(x, w, y, y_f32, M, N, K, SkinnyFusion{}, target_ctas, stream);
}

cudaError_t launch_skinny_gemm_argmax(const __nv_bfloat16* x, const __nv_bfloat16* w, float* y, int M, int N,
                                      int K, const SkinnyArgmax& argmax, int target_ctas, cudaStream_t stream) {
  if (argmax.keys == nullptr) return cudaErrorInvalidValue;
  return launch_skinny(x, w, y, true, M, N, K, SkinnyFusion{}, target_ctas, stream, argmax);
}

cudaError_t launch_skinny_gemm_fused(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y,
                                     int M, int N, int K, const SkinnyFusion& f, int target_ctas,
                                     cudaStream_t stream) {
  const bool residual = f.residual != nullptr;
  if (residual && (f.residual_out == nullptr || f.gamma == nullptr || f.x_out == nullptr ||
                   f.ssq_out == nullptr || f.gated)) {
    return cudaErrorInvalidValue;
  }
  if (residual && (y != nullptr || f.ssq_in != nullptr)) return cudaErrorInvalidValue;  // one form
  if (!residual && y == nullptr) return cudaErrorInvalidValue;
  if (f.gated && f.ssq_in == nullptr) return cudaErrorInvalidValue;  // gated comes with the norm
  if (f.ssq_in != nullptr && f.ssq_tiles < 1) return cudaErrorInvalidValue;
  return launch_skinny(x, w, y, false, M, N, K, f, target_ctas, stream);
}

}  // namespace cascade::cuda
