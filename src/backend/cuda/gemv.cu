#include "backend/cuda/gemv.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "backend/cuda/device_utils.cuh"
#include "backend/cuda/launch.cuh"

namespace cascade::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 4;                     // warps per block, one output column each at a time
constexpr int kUnroll = 8;                    // 16-byte loads of w in flight per lane
constexpr int kMaxSmemBytes = 96 * 1024;      // x tile limit (opted in per instantiation)
constexpr int kSmemPerSm = 227 * 1024;        // usable shared memory per SM on sm_90
constexpr int kMaxBlocksPerSm = 2048 / (kWarps * 32);

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
        __floats2bfloat162_rn(gf.x / (1.0f + expf(-gf.x)) * uf.x, gf.y / (1.0f + expf(-gf.y)) * uf.y);
    __builtin_memcpy(&out[i], &o, sizeof(o));
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

enum class Stage { kPlain, kGated, kNorm };

// x = bf16(gamma * bf16(h * rsqrt(mean(h²) + eps))) for h = residual + delta, rounded as
// add_rms_norm_vec_kernel rounds it, into xs [MT][K / 8] (rows >= M zero); block 0 writes h to
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
        a[u] = res[2 * i];
        b[u] = res[2 * i + 1];
        d[u] = dg != nullptr ? dg[i] : make_uint4(0, 0, 0, 0);
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
    const uint4 gv = gam[c];
    const unsigned gw[4] = {gv.x, gv.y, gv.z, gv.w};
    unsigned packed[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 gf = bf2(gw[e]);
      const float n0 = __bfloat162float(__float2bfloat16_rn(h[2 * e] * inv[m]));
      const float n1 = __bfloat162float(__float2bfloat16_rn(h[2 * e + 1] * inv[m]));
      const __nv_bfloat162 o = __floats2bfloat162_rn(gf.x * n0, gf.y * n1);
      __builtin_memcpy(&packed[e], &o, sizeof(o));
    }
    xs[i] = make_uint4(packed[0], packed[1], packed[2], packed[3]);
  }
}

// MT: rows padded up to 1/2; rows >= M are zero in shared memory and never written.
// stage: how x is formed in shared memory (kPlain: x as given; kGated: silu(gate) * up from the
// gate_up projection's [M, 2K] output, the MLP's down projection without a separate silu_mul
// kernel; kNorm: residual add + RMSNorm from nm, without a separate norm kernel).
template <int MT, Stage stage>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                void* __restrict__ y, bool y_f32, GemvNorm nm, int M, int N, int K) {
  extern __shared__ uint4 xs[];  // [MT][K / 8], then for kNorm [M][K] fp32
  const int nch = K / 8;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  int n = blockIdx.x * kWarps + warp;
  // w is constant across the step: start streaming this warp's first column before waiting on
  // the kernel that produces x (programmatic dependent launch) and before staging x.
  uint4 wv[kUnroll];
  if (n < N) {
    const uint4* wr = reinterpret_cast<const uint4*>(w + static_cast<std::int64_t>(n) * K);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = lane + u * 32;
      wv[u] = c < nch ? load_stream(wr + c) : make_uint4(0, 0, 0, 0);
    }
  }
  pdl_wait();  // x is written and y's last readers are done (launch.cuh)
  pdl_release();
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
  bool prefetched = true;
  for (; n < N; n += gridDim.x * kWarps) {
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
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = c0 + u * 32;
        if (c < nch) {
#pragma unroll
          for (int m = 0; m < MT; ++m) acc[m] = dot8(wv[u], xs[m * nch + c], acc[m]);
        }
      }
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], off);
    }
    // Lane m writes row m (all lanes hold the full sums after the butterfly).
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (lane == m && m < M) {
        const std::int64_t idx = static_cast<std::int64_t>(m) * N + n;
        if (y_f32) {
          static_cast<float*>(y)[idx] = acc[m];
        } else {
          static_cast<__nv_bfloat16*>(y)[idx] = __float2bfloat16_rn(acc[m]);
        }
      }
    }
  }
}

// ---- tensor-core skinny GEMM, 8 < M <= 64 ------------------------------------------------------
// y = x · wᵀ on mma.sync m16n8k16 with w as the A operand (16 output columns per mma) and x as B
// (8 rows per mma). A lane (g = lane / 4, t = lane % 4) loads 16 bytes of w rows g and g + 8 at
// k = 8t .. 8t + 7 of each 32-wide k step and 16 bytes of x row g at the same k: k is permuted
// inside the step the same way for both operands, so the fragments come straight from 16-byte
// loads (w from global memory, streamed once; x from shared memory) with no shuffles and no
// ldmatrix. A CTA of four warps owns 64 output columns and one range of K. With one range the CTA
// writes bf16 y; with several, each range's fp32 partial products go to a workspace and a second
// kernel (spread over the whole chip) sums them in split order, so the result never depends on
// timing. (v6 first had the last CTA of each column tile do that sum: 16 CTAs reading up to
// 16 x 64 x 64 partials each made the GEMM 2x slower than cuBLASLt, bench/NOTES_cuda.md.)

constexpr int kMmaWarps = 4;
constexpr int kMmaCols = 16 * kMmaWarps;  // output columns per CTA
constexpr int kMmaSteps = 8;              // 32-wide k steps per chunk: 16 loads of w in flight per lane
constexpr int kMmaOutStride = kMmaCols + 4;  // fp32 output tile row stride (conflict-free fragment stores)
constexpr int kMmaMaxKRange = 256;  // gated: 2 x 64 rows x (512 + 64) B of gate and up, 3 CTAs per SM

// MT: rows padded to 16/32/64 (rows >= M are zero in shared memory and never written).
template <int MT>
__global__ void __launch_bounds__(kMmaWarps * 32, 3) gemm_mma_kernel(MmaGemmParams p) {
  constexpr int NT = MT / 8;  // n8 tiles of x rows
  extern __shared__ uint4 xs[];  // [MT][stride] x slice (gated: then up's), later the fp32 y tile
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int tile = blockIdx.x, split = blockIdx.y;
  const int k0 = split * p.k_range, k1 = min(p.K, k0 + p.k_range);
  const int r0 = tile * kMmaCols + warp * 16 + g;  // this lane's w rows: r0 and r0 + 8
  const bool ok0 = r0 < p.N, ok1 = r0 + 8 < p.N;
  const bf16* w0 = p.w + static_cast<std::int64_t>(ok0 ? r0 : 0) * p.K + 8 * t;
  const bf16* w1 = p.w + static_cast<std::int64_t>(ok1 ? r0 + 8 : 0) * p.K + 8 * t;
  uint4 wa[kMmaSteps], wb[kMmaSteps];
  auto load_chunk = [&](int kc) {
#pragma unroll
    for (int u = 0; u < kMmaSteps; ++u) {
      const int k = kc + 32 * u;
      const uint4 z = make_uint4(0, 0, 0, 0);
      wa[u] = k < k1 && ok0 ? load_stream(reinterpret_cast<const uint4*>(w0 + k)) : z;
      wb[u] = k < k1 && ok1 ? load_stream(reinterpret_cast<const uint4*>(w1 + k)) : z;
    }
  };
  // w is constant across the step: its first chunk streams while the previous kernel finishes.
  load_chunk(k0);
  pdl_wait();  // x is written and y's last readers are done (launch.cuh)
  pdl_release();
  // Stage x[0, MT) x [k0, k1) with asynchronous copies, all in flight at once (rows >= M zero-filled):
  // a round of loads per few chunks through registers queued each round behind the flood of w
  // loads above, and made this kernel 2x slower than cuBLASLt (bench/NOTES_cuda.md, v6).
  const int stride = p.x_stride;  // uint4 per shared row
  const int nc = (k1 - k0) / 8;   // uint4 per row of the slice
  const uint4* xg = reinterpret_cast<const uint4*>(p.x);
  const int kc8 = p.K / 8, k08 = k0 / 8;
  uint4* up = xs + MT * stride;  // gated: the up half, silu(gate) * up formed in place after
  // This thread's chunks (m, c) advance by blockDim.x in row-major order: one division, then adds.
  const int m0 = threadIdx.x / nc, c0 = threadIdx.x - m0 * nc;
  const int dm = blockDim.x / nc, dc = blockDim.x - dm * nc;
  for (int m = m0, c = c0; m < MT;) {
    const bool valid = m < p.M;
    const int mv = valid ? m : 0;
    if (p.gated) {
      cp_async16(xs + m * stride + c, xg + 2 * mv * kc8 + k08 + c, valid);
      cp_async16(up + m * stride + c, xg + 2 * mv * kc8 + kc8 + k08 + c, valid);
    } else {
      cp_async16(xs + m * stride + c, xg + mv * kc8 + k08 + c, valid);
    }
    m += dm;
    c += dc;
    if (c >= nc) {
      c -= nc;
      ++m;
    }
  }
  cp_async_commit();
  cp_async_wait<0>();
  if (p.gated) {  // each thread transforms the chunks it copied (its own copies are visible to it)
    for (int m = m0, c = c0; m < p.M;) {
      xs[m * stride + c] = silu_mul8(xs[m * stride + c], up[m * stride + c]);
      m += dm;
      c += dc;
      if (c >= nc) {
        c -= nc;
        ++m;
      }
    }
  }
  __syncthreads();
  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
  for (int kc = k0; kc < k1; kc += 32 * kMmaSteps) {
    if (kc != k0) load_chunk(kc);
#pragma unroll
    for (int u = 0; u < kMmaSteps; ++u) {
      const int k = kc + 32 * u;
      if (k < k1) {
        const uint4* xr = xs + g * stride + (k - k0) / 8 + t;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const uint4 xv = xr[j * 8 * stride];
          const unsigned a0[4] = {wa[u].x, wb[u].x, wa[u].y, wb[u].y};
          const unsigned a1[4] = {wa[u].z, wb[u].z, wa[u].w, wb[u].w};
          mma_bf16(acc[j], a0, xv.x, xv.y);
          mma_bf16(acc[j], a1, xv.z, xv.w);
        }
      }
    }
  }
  // Fragments -> an fp32 [MT][64] tile in shared memory (the x slice is no longer needed).
  __syncthreads();
  float* out = reinterpret_cast<float*>(xs);
  const int col = warp * 16 + g;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int m = j * 8 + 2 * t;
    out[m * kMmaOutStride + col] = acc[j][0];
    out[(m + 1) * kMmaOutStride + col] = acc[j][1];
    out[m * kMmaOutStride + col + 8] = acc[j][2];
    out[(m + 1) * kMmaOutStride + col + 8] = acc[j][3];
  }
  __syncthreads();
  // Out in 16-byte pieces: four columns per thread (N % 4 == 0, so a piece is wholly in or out).
  const int n0 = tile * kMmaCols;
  const int cols = min(kMmaCols, p.N - n0);
  constexpr int kQuads = kMmaCols / 4;
  if (p.splits == 1) {
    for (int i = threadIdx.x; i < p.M * kQuads; i += blockDim.x) {
      const int m = i / kQuads, c = (i % kQuads) * 4;
      if (c >= cols) continue;
      const float4 v = *reinterpret_cast<const float4*>(out + m * kMmaOutStride + c);
      const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
      uint2 packed;
      __builtin_memcpy(&packed.x, &lo, sizeof(lo));
      __builtin_memcpy(&packed.y, &hi, sizeof(hi));
      *reinterpret_cast<uint2*>(p.y + static_cast<std::int64_t>(m) * p.N + n0 + c) = packed;
    }
    return;
  }
  // Split-K: this range's fp32 partial products; mma_reduce_kernel sums the ranges.
  float* part = p.partial + static_cast<std::int64_t>(split) * p.M * p.N + n0;
  for (int i = threadIdx.x; i < p.M * kQuads; i += blockDim.x) {
    const int m = i / kQuads, c = (i % kQuads) * 4;
    if (c < cols) {
      *reinterpret_cast<float4*>(part + static_cast<std::int64_t>(m) * p.N + c) =
          *reinterpret_cast<const float4*>(out + m * kMmaOutStride + c);
    }
  }
}

// y = bf16(sum of the split-K partials in split order), four outputs per thread, every split's
// load in flight together (the sum over splits is the same order on every run: no atomics).
constexpr int kReduceThreads = 256;
constexpr int kReduceMaxSplits = 16;

__global__ void __launch_bounds__(kReduceThreads) mma_reduce_kernel(const float* __restrict__ partial,
                                                                   bf16* __restrict__ y, int M, int N,
                                                                   int splits) {
  pdl_wait();  // the partials are written and y's last readers are done (launch.cuh)
  pdl_release();
  const std::int64_t plane = static_cast<std::int64_t>(M) * N;
  const std::int64_t quads = plane / 4;  // N % 4 == 0 (mma_split)
  for (std::int64_t q = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; q < quads;
       q += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    float4 v[kReduceMaxSplits];
#pragma unroll
    for (int sp = 0; sp < kReduceMaxSplits; ++sp) {
      if (sp < splits) v[sp] = __ldcg(reinterpret_cast<const float4*>(partial + sp * plane) + q);
    }
    float4 acc = v[0];
#pragma unroll
    for (int sp = 1; sp < kReduceMaxSplits; ++sp) {
      if (sp < splits) {
        acc.x += v[sp].x;
        acc.y += v[sp].y;
        acc.z += v[sp].z;
        acc.w += v[sp].w;
      }
    }
    const __nv_bfloat162 lo = __floats2bfloat162_rn(acc.x, acc.y), hi = __floats2bfloat162_rn(acc.z, acc.w);
    uint2 packed;
    __builtin_memcpy(&packed.x, &lo, sizeof(lo));
    __builtin_memcpy(&packed.y, &hi, sizeof(hi));
    reinterpret_cast<uint2*>(y)[q] = packed;
  }
}

int padded_rows(int M) { return M <= 1 ? 1 : 2; }

int gemv_smem(int MT, int M, int K, bool norm) { return MT * K * 2 + (norm ? M * K * 4 : 0); }

template <int MT, Stage stage>
cudaError_t launch_mt(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32,
                      const GemvNorm& nm, int M, int N, int K, int sm_count, cudaStream_t stream) {
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
  // Every block of the kNorm stage forms the whole norm itself: 4 blocks per SM (instead of the 7
  // that registers allow) measured 3% faster at batch 1 and 2 (1 and 2 per SM were 8% and 32%
  // slower: too few columns streaming at once; v6).
  if constexpr (stage == Stage::kNorm) per_sm = per_sm > 4 ? 4 : per_sm;
  const std::int64_t need = (static_cast<std::int64_t>(N) + kWarps - 1) / kWarps;
  const std::int64_t resident = static_cast<std::int64_t>(sm_count > 0 ? sm_count : 1) * per_sm;
  const int grid = static_cast<int>(need < resident ? need : resident);
  // Programmatic dependent launch (launch.cuh): this grid may start while the previous kernel in
  // the stream finishes; it streams its first columns of w, then waits before touching x or y.
  return launch_pdl<gemv_kernel<MT, stage>>(dim3(grid), dim3(kWarps * 32), static_cast<std::size_t>(smem),
                                            stream, x, w, y, y_f32, nm, M, N, K);
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
                       const GemvNorm& nm, int M, int N, int K, int sm_count, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  switch (padded_rows(M)) {
    case 1: return launch_mt<1, stage>(x, w, y, y_f32, nm, M, N, K, sm_count, stream);
    default: return launch_mt<2, stage>(x, w, y, y_f32, nm, M, N, K, sm_count, stream);
  }
}

}  // namespace

cudaError_t launch_gemv(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int M,
                        int N, int K, int sm_count, cudaStream_t stream) {
  return launch_any<Stage::kPlain>(x, w, y, y_f32, {}, M, N, K, sm_count, stream);
}

MmaSplit mma_split(const __nv_bfloat16* x, const __nv_bfloat16* w, int M, int N, int K,
                   const MmaWorkspace& ws, int sm_count) {
  if (M < kMmaMinM || M > kMmaMaxM || N < 4 || N % 4 != 0 || K < 32 || K % 32 != 0) return {};
  if (reinterpret_cast<std::uintptr_t>(x) % 16 != 0 || reinterpret_cast<std::uintptr_t>(w) % 16 != 0)
    return {};
  const std::int64_t tiles = (static_cast<std::int64_t>(N) + kMmaCols - 1) / kMmaCols;
  static const int per_sm = [] {
    const char* e = std::getenv("CASCADE_MMA_CTAS_PER_SM");
    const int v = e != nullptr ? std::atoi(e) : 0;
    return v > 0 ? v : 2;
  }();
  // Enough CTAs for `per_sm` per SM, each K range at least 64 and at most kMmaMaxKRange wide.
  const std::int64_t target = static_cast<std::int64_t>(sm_count > 0 ? sm_count : 1) * per_sm;
  std::int64_t splits = (target + tiles - 1) / tiles;
  splits = std::max<std::int64_t>(1, std::min<std::int64_t>(splits, K / 64));
  int k_range = static_cast<int>((K + splits - 1) / splits);
  k_range = std::min(kMmaMaxKRange, (k_range + 31) / 32 * 32);
  splits = (K + k_range - 1) / k_range;
  if (splits > kReduceMaxSplits) {
    k_range = (K + kReduceMaxSplits - 1) / kReduceMaxSplits;
    k_range = (k_range + 31) / 32 * 32;
    splits = (K + k_range - 1) / k_range;
  }
  if (k_range > kMmaMaxKRange) return {};
  if (splits > 1 && (ws.partial == nullptr || static_cast<std::size_t>(splits) * M * N > ws.partial_elems)) return {};
  return {static_cast<int>(splits), k_range};
}

namespace {

int mma_x_stride(int k_range) {  // 16-byte units; row stride = 64 mod 128 bytes (conflict-free)
  return ((k_range * 2 + 127) / 128 * 128 + 64) / 16;
}

template <int MT>
cudaError_t launch_mma_mt(const MmaGemmParams& p, cudaStream_t stream) {
  const std::size_t smem = std::max<std::size_t>(static_cast<std::size_t>(MT) * p.x_stride * 16 * (p.gated ? 2 : 1),
                                                 static_cast<std::size_t>(MT) * kMmaOutStride * 4);
  static const cudaError_t attr_err = cudaFuncSetAttribute(
      gemm_mma_kernel<MT>, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmemBytes);
  if (attr_err != cudaSuccess) return attr_err;
  cudaError_t err = launch_pdl<gemm_mma_kernel<MT>>(dim3((p.N + kMmaCols - 1) / kMmaCols, p.splits),
                                                    dim3(kMmaWarps * 32), smem, stream, p);
  if (err != cudaSuccess || p.splits == 1) return err;
  const std::int64_t quads = static_cast<std::int64_t>(p.M) * p.N / 4;
  const int grid = static_cast<int>(std::min<std::int64_t>((quads + kReduceThreads - 1) / kReduceThreads, 4096));
  return launch_pdl<mma_reduce_kernel>(dim3(grid), dim3(kReduceThreads), 0, stream, p.partial, p.y, p.M, p.N,
                                       p.splits);
}

}  // namespace

cudaError_t launch_gemm_mma(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, bool gated,
                            int M, int N, int K, const MmaWorkspace& ws, int sm_count, cudaStream_t stream) {
  const MmaSplit sp = mma_split(x, w, M, N, K, ws, sm_count);
  if (sp.splits == 0) return cudaErrorInvalidValue;
  MmaGemmParams p;
  p.x = x;
  p.w = w;
  p.y = y;
  p.partial = ws.partial;
  p.M = M;
  p.N = N;
  p.K = K;
  p.k_range = sp.k_range;
  p.splits = sp.splits;
  p.x_stride = mma_x_stride(sp.k_range);
  p.gated = gated;
  if (M <= 16) return launch_mma_mt<16>(p, stream);
  if (M <= 32) return launch_mma_mt<32>(p, stream);
  return launch_mma_mt<64>(p, stream);
}

cudaError_t launch_gemv_silu(const __nv_bfloat16* gate_up, const __nv_bfloat16* w, __nv_bfloat16* y, int M,
                             int N, int K, int sm_count, cudaStream_t stream) {
  return launch_any<Stage::kGated>(gate_up, w, y, false, {}, M, N, K, sm_count, stream);
}

}  // namespace cascade::cuda

namespace cascade::cuda {

bool gemv_norm_supported(const GemvNorm& nm, const __nv_bfloat16* w, int M, int K) {
  if (!gemv_supported(nm.gamma, w, M, K) || nm.residual == nullptr || nm.gamma == nullptr) return false;
  const auto misaligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 != 0; };
  if (misaligned(nm.residual) || misaligned(nm.residual_out) || misaligned(nm.delta)) return false;
  return gemv_smem(padded_rows(M), M, K, true) <= kMaxSmemBytes;
}

cudaError_t launch_gemv_norm(const GemvNorm& nm, const __nv_bfloat16* w, void* y, bool y_f32, int M, int N,
                             int K, int sm_count, cudaStream_t stream) {
  return launch_any<Stage::kNorm>(nullptr, w, y, y_f32, nm, M, N, K, sm_count, stream);
}

}  // namespace cascade::cuda
