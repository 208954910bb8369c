#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace cascade {

// How one request picks its tokens. temperature 0 means greedy. top_k <= 0 and top_p >= 1 and
// min_p <= 0 disable those filters. A set seed makes sampling reproducible for that request.
struct SamplingParams {
  float temperature = 1.0f;
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  std::optional<std::uint64_t> seed;
  int max_tokens = 16;
  std::vector<std::int32_t> stop_token_ids;  // in addition to the model's EOS ids
  std::vector<std::string> stop;             // stop strings; the match is cut from the text
  bool ignore_eos = false;
  bool logprobs = false;  // return each generated token's log-probability (costs a logits copy)
};

}  // namespace cascade
