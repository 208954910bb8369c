// Flushing L2 between timed runs of the CUDA benchmarks (.cu files).
//
// By default the flush *reads* a 256 MB buffer: L2 (50 MB on an H100) then holds only clean
// lines, as in an engine step, where the kernels before attention mostly read weights. The
// benchmarks first flushed with a 256 MB memset, which leaves L2 full of dirty lines: the timed
// kernel then paid for writing them back as it evicted them, up to one extra byte written per
// byte read for the first ~50 MB (bench/kv_read_probe: a 134 MB paged read 56.6 us after a
// memset, see bench/NOTES_cuda.md v17). CASCADE_BENCH_FLUSH=memset keeps that older flush, for
// comparison with results taken with it.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

namespace cascade::bench {

// static: a copy per including file, so that two files of one binary may include this.
static __global__ void l2_flush_read_kernel(const uint4* p, std::size_t n, unsigned* sink) {
  unsigned acc = 0;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const uint4 v = __ldcg(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9E3779B9u) *sink = acc;  // keeps the loads; the buffer is zero, so never taken
}

// True where CASCADE_BENCH_FLUSH=memset asks for the older, writing flush.
inline bool flush_by_memset() {
  const char* v = std::getenv("CASCADE_BENCH_FLUSH");
  return v != nullptr && std::strcmp(v, "memset") == 0;
}

inline const char* flush_name() { return flush_by_memset() ? "memset 256 MB" : "read 256 MB"; }

// `buf` holds `bytes` (a multiple of 16) followed by 4 spare bytes for the sink; it must be zeroed
// once by the caller (and is then only read, unless the memset flush is asked for). `memset`:
// the older flush, by default where CASCADE_BENCH_FLUSH=memset.
inline cudaError_t flush_l2(void* buf, std::size_t bytes, int round, cudaStream_t st, bool memset = flush_by_memset()) {
  if (memset) return cudaMemsetAsync(buf, round & 0xFF, bytes, st);
  l2_flush_read_kernel<<<1056, 512, 0, st>>>(static_cast<const uint4*>(buf), bytes / 16,
                                             reinterpret_cast<unsigned*>(static_cast<char*>(buf) + bytes));
  return cudaGetLastError();
}

}  // namespace cascade::bench
