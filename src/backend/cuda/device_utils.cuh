// Device helpers shared by the CUDA kernels: warp and block reductions with a fixed order (so
// results are deterministic run to run). Block reductions must be called by every thread of the
// block; they return the result to all threads.
#pragma once

#include <cuda_runtime.h>

namespace cascade::cuda {

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct MinOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return b < a ? b : a; }
};

template <typename T, typename Op>
__device__ inline T warp_reduce(T v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ inline float warp_sum(float v) { return warp_reduce(v, SumOp{}); }

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

// (value, id) argmax: larger value wins, ties to the lower id; id == sentinel loses to any id.
__device__ inline void block_argmax(float& v, int& id, float* red_v, int* red_i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, id, o);
    if (ov > v || (ov == v && oi < id)) {
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
    if (red_v[w] > v || (red_v[w] == v && red_i[w] < id)) {
      v = red_v[w];
      id = red_i[w];
    }
  }
}

// ---- tensor-core and async-copy primitives (sm_80+) ----

// c += a · b on one m16n8k16 tile: a (16x16 bf16, row) and b (16x8 bf16, col) in mma.sync's
// fragment layout, c in fp32.
__device__ inline void mma_bf16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16-byte global->shared copy; zero-fills when !valid.
__device__ inline void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_size = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem),
               "r"(src_size));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ inline void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

}  // namespace cascade::cuda
