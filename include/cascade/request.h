// A request is a list of segments: a system prompt, context documents, a query. Each segment becomes
// a ContextChunk whose KV is computed once and shared by every request with the same prefix.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "cascade/sampling_params.h"

namespace cascade {

enum class ChunkKind { kSystem, kContext, kQuery, kAuto };

const char* chunk_kind_name(ChunkKind kind);
// Parses "system", "context", "query", "auto"; nullopt otherwise.
std::optional<ChunkKind> parse_chunk_kind(const std::string& name);

struct Segment {
  ChunkKind kind = ChunkKind::kContext;
  std::vector<std::int32_t> ids;          // token ids, or
  std::optional<std::string> text;        // text (needs a tokenizer), or
  std::optional<std::string> chunk_id;    // a registered chunk's id (hex SHA-256)
};

struct Request {
  // Either segments, or a plain prompt (cut into page-aligned `auto` chunks when caching is on).
  std::vector<Segment> segments;
  SamplingParams sampling;
};

enum class FinishReason { kNone, kLength, kStop, kAbort };
const char* finish_reason_name(FinishReason reason);

struct RequestOutput {
  std::uint64_t request_id = 0;
  std::vector<std::int32_t> prompt_ids;
  std::vector<std::int32_t> token_ids;  // generated
  std::vector<float> token_logprobs;    // with SamplingParams::logprobs: log p of each generated token
  std::string text;                     // decoded generated text (when a tokenizer is present)
  FinishReason finish_reason = FinishReason::kNone;
  int num_cached_tokens = 0;            // prompt tokens whose KV came from the cache
  std::string error;                    // non-empty when the request failed
};

}  // namespace cascade
