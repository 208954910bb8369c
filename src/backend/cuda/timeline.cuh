// Diagnostic builds only (CASCADE_TIMELINE=1, bench/diag_build.sh): the cascade attention
// kernels' CTAs write global-timer stamps at marked points into a buffer that
// cuda_attention_bench attaches and prints, to show where a step's time goes between the kernels
// of one graph (bench/NOTES_cuda.md v29). In every real build CASCADE_TIMELINE is 0: a mark
// compiles to nothing and the attach functions do not exist. (The marks cost registers: the
// one-warp short-tile kernel at head_dim 128 takes 171 instead of 164, so 11 CTAs an SM rather
// than 12; read a timeline as that configuration's.)
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#ifndef CASCADE_TIMELINE
#define CASCADE_TIMELINE 0
#endif

namespace cascade::cuda::timeline {

// kLevel is attention_level_kernel's one-warp form, kFourWarp its four-warp one (two levels of one
// form in a graph would share stamps).
enum Kernel { kFill = 0, kWide = 1, kLevel = 2, kMerge = 3, kFourWarp = 4, kKernels = 5 };
// Marks: 0 entry, 1 plan read (before the PDL wait), 2 after the wait, 3 first tile landed,
// 4 last tile done, 5 exit.
inline constexpr int kMaxCtas = 16384, kMarks = 6;
inline constexpr std::size_t kWords = static_cast<std::size_t>(kKernels) * kMaxCtas * kMarks;

#if CASCADE_TIMELINE
namespace {
__device__ unsigned long long* g_buffer = nullptr;  // per translation unit (attach)
// Stamp mark `m` of this CTA of `kernel` (call from one thread). Internal, as g_buffer is.
__device__ __forceinline__ void mark(int kernel, int m) {
  unsigned long long* const b = g_buffer;
  if (b == nullptr) return;
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)::"memory");
  const unsigned cta = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  if (cta < static_cast<unsigned>(kMaxCtas)) b[(static_cast<std::size_t>(kernel) * kMaxCtas + cta) * kMarks + m] = t;
}
}  // namespace
// Points this translation unit's kernels at `buffer` (kWords stamps).
#define CASCADE_TIMELINE_ATTACH(fn)                                                 \
  cudaError_t fn(unsigned long long* buffer) {                                      \
    return cudaMemcpyToSymbol(::cascade::cuda::timeline::g_buffer, &buffer, sizeof buffer); \
  }
cudaError_t attach_attention(unsigned long long* buffer);
cudaError_t attach_wide(unsigned long long* buffer);
cudaError_t attach_kernels(unsigned long long* buffer);
#else
__device__ __forceinline__ void mark(int, int) {}
#define CASCADE_TIMELINE_ATTACH(fn)
#endif

}  // namespace cascade::cuda::timeline
