// Picking the next token from one row of logits on the CPU, plus request-parameter validation.
//
// Pipeline for temperature > 0, following vLLM's v1 sampler (vllm/v1/sample/sampler.py):
//   1. scale logits by 1/temperature, softmax in double (max-subtracted);
//   2. min-p: keep tokens with p >= min_p * p_max (vLLM applies it before top-k/top-p);
//   3. top-k: keep tokens whose logit is >= the k-th largest logit (ties at the boundary are all
//      kept, as vLLM and HF do);
//   4. top-p on the distribution renormalised over what is left: keep the smallest set of most
//      probable tokens whose cumulative probability reaches top_p (always at least one);
//   5. inverse CDF with uniform_draw(seed, step) over the kept tokens, walked in a fixed order:
//      probability descending, ties by lower id.
// Steps 2 and 3 commute (both keep an upper set of the same ordering), so the code applies top-k
// first when it is on, to avoid touching the whole vocabulary in double precision.
// The result is a deterministic function of (logits, params): same inputs, same token.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "cascade/sampling_params.h"

#if defined(__CUDACC__)
#define CASCADE_HOST_DEVICE __host__ __device__
#else
#define CASCADE_HOST_DEVICE
#endif

namespace cascade {

struct RowSampling;  // engine/model_runner.h

// Largest max_tokens a request may ask for.
inline constexpr int kMaxRequestTokens = 1 << 20;

// splitmix64's finaliser: a bijection on 64 bits with full avalanche.
CASCADE_HOST_DEVICE inline std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The uniform draw in [0, 1) for (seed, step): a pure counter-based function, identical on host and
// device. For a fixed seed it is injective in step before the cut to 53 bits, and vice versa.
CASCADE_HOST_DEVICE inline double uniform_draw(std::uint64_t seed, std::uint64_t step) {
  const std::uint64_t key = mix64(seed + 0x9e3779b97f4a7c15ULL);
  const std::uint64_t bits = mix64(key ^ (step * 0xd1b54a32d192ed03ULL + 0x632be59bd9b4e019ULL));
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);  // 2^-53
}

#if !defined(__CUDACC__)

// Picks the next token id from one row of logits (NaN counts as -inf). temperature <= 0: argmax,
// ties to the lowest id. Throws Error(kInvalidArgument) if the row is empty or has no finite or
// +inf logit.
std::int32_t sample_token(std::span<const float> logits, const RowSampling& p);

// sample_token for each row of a row-major [params.size(), vocab_size] matrix, rows in parallel.
std::vector<std::int32_t> sample_tokens(std::span<const float> logits, int vocab_size,
                                        std::span<const RowSampling> params);

// Checks a request's sampling parameters; throws Error(kInvalidArgument) naming the bad field.
// Accepts top_k = -1 or 0 as "off" (as vLLM does); rejects empty stop strings.
void validate_sampling_params(const SamplingParams& params);

#endif  // !__CUDACC__

}  // namespace cascade
