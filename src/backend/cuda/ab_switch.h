// The CUDA backend's A/B switches: environment variables (CASCADE_NO_PDL, CASCADE_GEMM_NO_GEMV,
// CASCADE_GEMV_NO_NORM, CASCADE_GEMM_NO_SKINNY, CASCADE_GEMM_NO_FUSE, CASCADE_GEMM_NO_ARGMAX, CASCADE_ATTENTION_NO_WGMMA,
// CASCADE_ATTENTION_NO_FORK, CASCADE_ATTENTION_NO_CHAIN, CASCADE_MERGE_BLOCK_PER_HEAD, CASCADE_ATTENTION_MERGE_KERNEL,
// CASCADE_ATTENTION_NO_ROPE_FUSE, CASCADE_ATTENTION_SPLIT_ALONE, CASCADE_ATTENTION_NO_WIDE,
// CASCADE_ATTENTION_WIDE_MIN_RATIO, CASCADE_ATTENTION_WIDE_FILL, CASCADE_ATTENTION_WIDE_SM_RATE,
// CASCADE_ATTENTION_WIDE_CTAS, CASCADE_ATTENTION_WIDE_TILE_NS, CASCADE_ATTENTION_ONE_WARP_PER_SM,
// CASCADE_ATTENTION_ONE_WARP_WAVES, CASCADE_PDL_NO_EARLY_RELEASE;
// the README lists them) that turn one path off (or, ONE_WARP_WAVES, on) for timing
// comparisons. Host code only; each reader caches the answer once per process.
#pragma once

#include <cstdlib>

namespace cascade::cuda {

// True when the switch `name` is set to 1.
inline bool ab_switch_on(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] == '1';
}

// The number the switch `name` is set to, or `fallback` where it is unset.
inline long long ab_switch_value(const char* name, long long fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::atoll(v) : fallback;
}

}  // namespace cascade::cuda
