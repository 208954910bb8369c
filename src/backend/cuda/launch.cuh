// Programmatic dependent launch (PDL, sm_90): every kernel of the backend is launched with
// programmatic stream serialization, so the next kernel's CTAs can be scheduled while the current
// one drains instead of after it has fully retired (a decode step at batch 1 is ~300 small
// dependent kernels; the launch gap between them was a large part of the step).
//
// The contract, kept by every kernel that launch_pdl launches:
//   1. `pdl_wait()` runs in every thread before the kernel reads anything an earlier kernel wrote
//      or writes anything an earlier kernel reads, and before any early return: it blocks until
//      the previous grid in the stream has completed and its writes are visible. Completion is
//      transitive (the previous grid itself waited on its own predecessor before finishing).
//   2. `pdl_release()` lets the next grid be scheduled; its CTAs then sit in their own
//      pdl_wait(). It comes after `pdl_wait()`, except in a kernel that releases early (below).
// Work that touches only data complete before the step's first kernel started may come before
// pdl_wait(): the weights, the step's plan arrays (their H2D copy is stream-ordered before the
// step's first kernel, and every later kernel of the step launches after that one started), and
// KV of earlier steps (the attention kernels' keys before kv_fresh).
// Early release: a kernel may call pdl_release() before its pdl_wait() (the early_release flags
// of QkNormRopeParams, MergeStatesParams and the GEMV launchers), so that its successor's
// pre-wait work (attention's plan lookups and first KV tiles; a GEMV's first columns of w)
// overlaps this kernel's own wait. That keeps the rules above: pre-wait reads need only the
// step's first kernel to have started, and the successor's post-wait part still runs after this
// kernel completed, which itself waited for its predecessor. No deadlock either: a grid's
// dependents launch only once all of its CTAs have started. The runner's small-batch chain per
// layer is qkv GEMV, qk_norm_rope (early; batches of 1-2 keep it: LevelPack::qk_rope is never
// taken where keys are read ahead), attention levels, merge (early; none where a lone
// level writes its rows itself, LevelPack::direct_out), o_proj, gate_up, down (early), as
// measured (v7); CASCADE_PDL_NO_EARLY_RELEASE=1 turns it off (A/B).
// Levels chained on one stream (LevelFork's chain, attention.h; v30): the first level waits and
// then releases, as every kernel; each later one is `beside` (AttentionLevelParams): it releases
// at its start and takes no wait there, since it can launch only after every CTA of the level
// before it has passed its own wait (so q and the step's K/V are complete; it reads q from L2
// and K/V through cp.async.cg); its last CTA waits before it exits, so that the grid completes
// only after the level before it, and the merge's wait covers every level by transitivity. No
// deadlock: the level a last CTA waits for is wholly resident by then (its CTAs all started).
// Levels forked onto a second stream (LevelFork, attention.h) are ordered by events: the side
// stream waits for the event recorded after qk_norm_rope (or the qkv projection where a lone
// level forms q itself, LevelPack::qk_rope; its levels, like every kernel, read
// q and K/V only after their pdl_wait), and the merge's stream waits for the event recorded after
// the side levels; the merge's pdl_wait covers the level on its own stream.
// In code compiled for older architectures (the compute_80 PTX) both are no-ops, and such kernels
// are launched without the attribute (pdl_kernel_ok), so their launches are ordinary.
// CASCADE_NO_PDL=1 launches without the attribute (ordinary stream order), for A/B timing.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "backend/cuda/ab_switch.h"

namespace cascade::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_release() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// pdl_wait() and pdl_release() in the order a kernel's early_release flag asks for (launch.cuh's
// early release: release first, so the next kernel's pre-wait work overlaps this wait).
__device__ __forceinline__ void pdl_wait_and_release(bool early_release) {
  if (early_release) pdl_release();
  pdl_wait();
  if (!early_release) pdl_release();
}

// PDL needs compute capability 9.0; the attribute is left off on older devices (and when
// CASCADE_NO_PDL=1). Read once per process, for the device current at the first launch.
// pdl_kernel_ok() below also requires that the kernel's loaded code has the griddepcontrol
// instructions.
inline bool pdl_enabled() {
  static const bool on = [] {
    if (ab_switch_on("CASCADE_NO_PDL")) return false;
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
    return major >= 9;
  }();
  return on;
}

// True when the code the driver loaded for `kernel` was compiled from PTX for sm_90 or later, so
// that pdl_wait()/pdl_release() are real instructions in it. A build whose only image for this
// device is the compute_80 PTX (an arch list without sm_90, or a newer GPU that cannot run the
// sm_90a cubin) has them compiled out, and launching such a kernel with programmatic
// serialization would let it read its predecessor's output before that is complete.
// (cudaFuncGetAttributes needs no launch, so this is safe during CUDA-graph capture.)
inline bool pdl_kernel_ok(const void* kernel) {
  cudaFuncAttributes attr{};
  return cudaFuncGetAttributes(&attr, kernel) == cudaSuccess && attr.ptxVersion >= 90;
}

// Kernel<<<grid, block, smem, stream>>>(args...) with programmatic stream serialization allowed,
// and with thread-block clusters of `cluster` CTAs where that has more than one (the cluster
// dimensions must divide the grid's). The kernel is a template argument so that whether it may
// use PDL is looked up once per kernel (a function-local static), not on every launch.
template <auto Kernel, typename... Args>
cudaError_t launch_pdl_cluster(dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream, dim3 cluster,
                               Args&&... args) {
  static const bool use_pdl = pdl_enabled() && pdl_kernel_ok(reinterpret_cast<const void*>(Kernel));
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (cluster.x * cluster.y * cluster.z > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster.x;
    attr[n].val.clusterDim.y = cluster.y;
    attr[n].val.clusterDim.z = cluster.z;
    ++n;
  }
  if (use_pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, Kernel, std::forward<Args>(args)...);
}

template <auto Kernel, typename... Args>
cudaError_t launch_pdl(dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream, Args&&... args) {
  return launch_pdl_cluster<Kernel>(grid, block, smem, stream, dim3(1, 1, 1), std::forward<Args>(args)...);
}

}  // namespace cascade::cuda
