// Hopper warpgroup MMA (wgmma) helpers shared by the sm_90a kernels (skinny_gemm.cu,
// attention.cu). Everything here exists only in code compiled for sm_90a (CASCADE_SM90A); the
// kernels that use it trap elsewhere, and their launchers refuse devices without that code
// (sm90a_code_available(), below).
//
// Shared-memory operands use the 128-byte swizzle: a tile is stored as rows of 128 bytes (64
// bf16), the 16-byte unit u of row r at unit u ^ (r % 8), eight-row groups forming 1024-byte
// atoms (so a tile must start 1024-byte aligned).
//   K-major (the reduction dimension contiguous in a row): rows are the M or N index; one
//     wgmma's 16 elements of K are 32 bytes of a row, so stepping K adds 32 bytes to the start
//     address; the stride offset is 1024 (next eight rows), the leading offset is unused.
//   MN-major (the M or N dimension contiguous in a row, used with the transpose flag): rows are
//     the K index; the stride offset is 1024 (next eight values of K) and the leading offset the
//     distance to the next 64 values of M or N.
#pragma once

#include <cstdint>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CASCADE_SM90A 1
#endif

namespace cascade::cuda {

// True when the current device runs this build's sm_90a code (an H100/H200 with the sm_90a cubin
// loaded). Probed once per device with a one-thread kernel and a synchronous copy, so call it
// first outside stream capture. Defined in skinny_gemm.cu.
bool sm90a_code_available();

#ifdef CASCADE_SM90A
// Matrix descriptor of a 128-byte-swizzled tile at shared address `addr`.
__device__ __forceinline__ std::uint64_t sw128_desc(std::uint32_t addr, std::uint32_t lead_bytes,
                                                    std::uint32_t stride_bytes) {
  return static_cast<std::uint64_t>((addr & 0x3FFFF) >> 4) |
         (static_cast<std::uint64_t>((lead_bytes >> 4) & 0x3FFF) << 16) |
         (static_cast<std::uint64_t>((stride_bytes >> 4) & 0x3FFF) << 32) |
         (static_cast<std::uint64_t>(1) << 62);
}
// The K-major case (leading offset unused, written as 16 bytes).
__device__ __forceinline__ std::uint64_t sw128_kmajor_desc(std::uint32_t addr) {
  return sw128_desc(addr, 16, 1024);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most kPending of this warpgroup's committed groups are still in flight (the
// oldest complete first).
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
__device__ __forceinline__ void wgmma_wait_all() { wgmma_wait<0>(); }
// cp.async (generic proxy) writes to shared memory -> wgmma (async proxy) reads of it.
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Keeps the compiler from moving accesses of wgmma accumulators across the fences and waits.
template <int N>
__device__ __forceinline__ void fence_operands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// The same for registers an in-flight wgmma reads (A fragments): fenced after its wait, they stay
// allocated until then, so nothing else is placed in them while the wgmma reads them.
template <int N, int M>
__device__ __forceinline__ void fence_operands(unsigned (&a)[N][M]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int j = 0; j < M; ++j) asm volatile("" : "+r"(a[i][j])::"memory");
  }
}

#define CASCADE_WG_F8(i)                                                                       \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])

// D[64 x 64] += A[64 x 16] · B[16 x 64], both operands K-major in shared memory.
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], std::uint64_t a, std::uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : CASCADE_WG_F8(0), CASCADE_WG_F8(8), CASCADE_WG_F8(16), CASCADE_WG_F8(24)
      : "l"(a), "l"(b), "r"(1));
}

// D[64 x 64] (+)= A[64 x 16] · B[16 x 64] with A in registers (the mma.m16n8k16 A layout per warp,
// warp w holding rows 16w..16w+15) and B in shared memory, K-major (kTransB 0) or MN-major (1).
// The accumulate flag (scale-d) is the immediate kAcc: 0 ignores D's old values (D = A · B).
// (An immediate, not a predicate set per call: a kernel that computes while a wgmma is in flight
// must not let ptxas reuse that predicate's register meanwhile.)
template <int kTransB, int kAcc = 1>
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[32], const unsigned (&a)[4], std::uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, %38, 1, 1, "
      "%37;\n"
      : CASCADE_WG_F8(0), CASCADE_WG_F8(8), CASCADE_WG_F8(16), CASCADE_WG_F8(24)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(kTransB), "n"(kAcc));
}

// D[64 x 128] (+)= A[64 x 16] · B[16 x 128], A in registers, B in shared memory (as above).
template <int kTransB, int kAcc = 1>
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[64], const unsigned (&a)[4], std::uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "
      "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "
      "%56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, %70, 1, 1, %69;\n"
      : CASCADE_WG_F8(0), CASCADE_WG_F8(8), CASCADE_WG_F8(16), CASCADE_WG_F8(24), CASCADE_WG_F8(32),
        CASCADE_WG_F8(40), CASCADE_WG_F8(48), CASCADE_WG_F8(56)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(kTransB), "n"(kAcc));
}

#undef CASCADE_WG_F8

// mbarriers (shared::cta) and TMA tile loads, for kernels with a producer warp (attention_wide.cu).
// A barrier's phase completes when its pending arrivals reach zero and the bytes it expects have
// landed; waiters name the phase by its parity.
__device__ __forceinline__ void mbar_init(std::uint32_t bar, std::uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes initialised barriers visible to the async proxy (TMA) and the other threads (with the
// barrier that follows).
__device__ __forceinline__ void mbar_fence_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(std::uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(std::uint32_t bar, std::uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT_AGAIN:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_AGAIN;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// One box of a 3-D tensor map (a __grid_constant__ kernel parameter) at coordinates (c0, c1, c2)
// into shared memory at `dst`, completing `bytes` of `bar`'s expected transaction count.
__device__ __forceinline__ void tma_load_3d(std::uint32_t dst, const void* map, std::uint32_t bar, int c0, int c1,
                                            int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}
// bar.arrive on a named barrier: counts toward `threads` without waiting.
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// bar.sync on a named barrier (1..15) of `threads` threads (a multiple of 32).
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
#endif  // CASCADE_SM90A

}  // namespace cascade::cuda
