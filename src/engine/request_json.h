// JSON <-> request types, shared by the CLI (--requests FILE.jsonl) and the HTTP server.
#pragma once

#include <nlohmann/json.hpp>

#include "cascade/llm.h"
#include "cascade/request.h"

namespace cascade {

// Reads sampling fields (max_tokens, temperature, top_k, top_p, min_p, seed, stop, stop_token_ids,
// ignore_eos) from `j` over `defaults`. Wrong types are kInvalidArgument errors naming the field.
SamplingParams parse_sampling_json(const nlohmann::json& j, const SamplingParams& defaults);

// One request: {"segments": [{"kind", "ids"|"text"|"chunk_id"}...]} or {"prompt_ids": [...]} or
// {"prompt": "..."}, plus sampling fields. Throws kInvalidArgument with the offending field named.
Request parse_request_json(const nlohmann::json& j, const SamplingParams& defaults);

nlohmann::json output_to_json(const RequestOutput& out, bool with_text);
nlohmann::json stats_to_json(const EngineStats& s);
nlohmann::json chunk_info_to_json(const ChunkInfo& c);
nlohmann::json preview_to_json(const CompositionPreview& p);

}  // namespace cascade
