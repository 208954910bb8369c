#include "backend/cuda/gemv.h"

#include <cstdint>

#include "backend/cuda/launch.cuh"

namespace cascade::cuda {
namespace {

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

// MT: rows padded up to 1/2/4/8; rows >= M are zero in shared memory and never written.
// gated: x is [M, 2K] (gate then up, the gate_up projection's output) and the product is taken
// with silu(gate) * up, computed while staging x (the MLP's down projection without a separate
// silu_mul kernel).
template <int MT>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                void* __restrict__ y, bool y_f32, bool gated, int M, int N, int K) {
  extern __shared__ uint4 xs[];  // [MT][K / 8]
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
  if (!gated) {
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

int padded_rows(int M) { return M <= 1 ? 1 : M <= 2 ? 2 : M <= 4 ? 4 : 8; }

template <int MT>
cudaError_t launch_mt(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, bool gated,
                      int M, int N, int K, int sm_count, cudaStream_t stream) {
  const int smem = MT * K * 2;
  if (smem > 48 * 1024) {
    // Opt in to more than 48 KB of dynamic shared memory, once per instantiation and only when a
    // shape needs it (Qwen3-0.6B's decode shapes stay within 48 KB).
    static const cudaError_t attr_err = cudaFuncSetAttribute(
        gemv_kernel<MT>, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmemBytes);
    if (attr_err != cudaSuccess) return attr_err;
  }
  int per_sm = kSmemPerSm / (smem + 1024);  // 1 KB reserved per block by the hardware
  per_sm = per_sm < 1 ? 1 : (per_sm > kMaxBlocksPerSm ? kMaxBlocksPerSm : per_sm);
  const std::int64_t need = (static_cast<std::int64_t>(N) + kWarps - 1) / kWarps;
  const std::int64_t resident = static_cast<std::int64_t>(sm_count > 0 ? sm_count : 1) * per_sm;
  const int grid = static_cast<int>(need < resident ? need : resident);
  // Programmatic dependent launch (launch.cuh): this grid may start while the previous kernel in
  // the stream finishes; it streams its first columns of w, then waits before touching x or y.
  return launch_pdl<gemv_kernel<MT>>(dim3(grid), dim3(kWarps * 32), static_cast<std::size_t>(smem), stream,
                    x, w, y, y_f32, gated, M, N, K);
}

}  // namespace

bool gemv_supported(const __nv_bfloat16* x, const __nv_bfloat16* w, int M, int K) {
  if (M < 1 || M > kGemvMaxM || K < 8 || K % 8 != 0) return false;
  if (reinterpret_cast<std::uintptr_t>(x) % 16 != 0 || reinterpret_cast<std::uintptr_t>(w) % 16 != 0)
    return false;
  return static_cast<std::int64_t>(padded_rows(M)) * K * 2 <= kMaxSmemBytes;
}

namespace {

cudaError_t launch_any(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, bool gated,
                       int M, int N, int K, int sm_count, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  switch (padded_rows(M)) {
    case 1: return launch_mt<1>(x, w, y, y_f32, gated, M, N, K, sm_count, stream);
    case 2: return launch_mt<2>(x, w, y, y_f32, gated, M, N, K, sm_count, stream);
    case 4: return launch_mt<4>(x, w, y, y_f32, gated, M, N, K, sm_count, stream);
    default: return launch_mt<8>(x, w, y, y_f32, gated, M, N, K, sm_count, stream);
  }
}

}  // namespace

cudaError_t launch_gemv(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int M,
                        int N, int K, int sm_count, cudaStream_t stream) {
  return launch_any(x, w, y, y_f32, false, M, N, K, sm_count, stream);
}

cudaError_t launch_gemv_silu(const __nv_bfloat16* gate_up, const __nv_bfloat16* w, __nv_bfloat16* y, int M,
                             int N, int K, int sm_count, cudaStream_t stream) {
  return launch_any(gate_up, w, y, false, true, M, N, K, sm_count, stream);
}

}  // namespace cascade::cuda
