#include "engine/request_json.h"

#include "core/error.h"

namespace cascade {
namespace {

using nlohmann::json;

template <typename T>
T get_field(const json& j, const char* name, const char* type_name) {
  try {
    return j.at(name).get<T>();
  } catch (const json::exception&) {
    throw_error(ErrorCode::kInvalidArgument, "field '{}' must be {}", name, type_name);
  }
}

std::vector<std::int32_t> get_ids(const json& j, const char* name) {
  const json& v = j.at(name);
  if (!v.is_array()) throw_error(ErrorCode::kInvalidArgument, "field '{}' must be an array of token ids", name);
  std::vector<std::int32_t> ids;
  ids.reserve(v.size());
  for (const json& e : v) {
    if (!e.is_number_integer()) {
      throw_error(ErrorCode::kInvalidArgument, "field '{}' must hold integers, found {}", name, e.dump());
    }
    const auto x = e.get<std::int64_t>();
    if (x < 0 || x > INT32_MAX) throw_error(ErrorCode::kInvalidArgument, "token id {} in '{}' is out of range", x, name);
    ids.push_back(static_cast<std::int32_t>(x));
  }
  return ids;
}

}  // namespace

SamplingParams parse_sampling_json(const json& j, const SamplingParams& defaults) {
  SamplingParams p = defaults;
  if (j.contains("max_tokens") && !j["max_tokens"].is_null()) p.max_tokens = get_field<int>(j, "max_tokens", "an integer");
  if (j.contains("temperature") && !j["temperature"].is_null()) p.temperature = get_field<float>(j, "temperature", "a number");
  if (j.contains("top_k") && !j["top_k"].is_null()) p.top_k = get_field<int>(j, "top_k", "an integer");
  if (j.contains("top_p") && !j["top_p"].is_null()) p.top_p = get_field<float>(j, "top_p", "a number");
  if (j.contains("min_p") && !j["min_p"].is_null()) p.min_p = get_field<float>(j, "min_p", "a number");
  if (j.contains("seed") && !j["seed"].is_null()) p.seed = get_field<std::uint64_t>(j, "seed", "a non-negative integer");
  if (j.contains("ignore_eos") && !j["ignore_eos"].is_null()) p.ignore_eos = get_field<bool>(j, "ignore_eos", "a boolean");
  if (j.contains("logprobs") && j["logprobs"].is_boolean()) p.logprobs = j["logprobs"].get<bool>();
  if (j.contains("stop") && !j["stop"].is_null()) {
    const json& s = j["stop"];
    if (s.is_string()) {
      p.stop = {s.get<std::string>()};
    } else {
      p.stop = get_field<std::vector<std::string>>(j, "stop", "a string or an array of strings");
    }
  }
  if (j.contains("stop_token_ids") && !j["stop_token_ids"].is_null()) p.stop_token_ids = get_ids(j, "stop_token_ids");
  return p;
}

Request parse_request_json(const json& j, const SamplingParams& defaults) {
  if (!j.is_object()) throw_error(ErrorCode::kInvalidArgument, "a request must be a JSON object");
  Request r;
  r.sampling = parse_sampling_json(j, defaults);
  const int forms = (j.contains("segments") ? 1 : 0) + (j.contains("prompt_ids") ? 1 : 0) + (j.contains("prompt") ? 1 : 0);
  if (forms != 1) {
    throw_error(ErrorCode::kInvalidArgument, "a request needs exactly one of 'segments', 'prompt_ids' or 'prompt'");
  }
  if (j.contains("prompt_ids")) {
    Segment s;
    s.kind = ChunkKind::kAuto;
    s.ids = get_ids(j, "prompt_ids");
    r.segments.push_back(std::move(s));
  } else if (j.contains("prompt")) {
    Segment s;
    s.kind = ChunkKind::kAuto;
    s.text = get_field<std::string>(j, "prompt", "a string");
    r.segments.push_back(std::move(s));
  } else {
    const json& segs = j["segments"];
    if (!segs.is_array() || segs.empty()) throw_error(ErrorCode::kInvalidArgument, "'segments' must be a non-empty array");
    for (const json& sj : segs) {
      if (!sj.is_object()) throw_error(ErrorCode::kInvalidArgument, "each segment must be an object");
      Segment s;
      const std::string kind = sj.contains("kind") ? get_field<std::string>(sj, "kind", "a string") : "context";
      auto k = parse_chunk_kind(kind);
      if (!k) throw_error(ErrorCode::kInvalidArgument, "unknown segment kind '{}' (system, context, query, auto)", kind);
      s.kind = *k;
      const int n = (sj.contains("ids") ? 1 : 0) + (sj.contains("text") ? 1 : 0) + (sj.contains("chunk_id") ? 1 : 0);
      if (n != 1) throw_error(ErrorCode::kInvalidArgument, "a segment needs exactly one of 'ids', 'text' or 'chunk_id'");
      if (sj.contains("ids")) s.ids = get_ids(sj, "ids");
      if (sj.contains("text")) s.text = get_field<std::string>(sj, "text", "a string");
      if (sj.contains("chunk_id")) s.chunk_id = get_field<std::string>(sj, "chunk_id", "a string");
      r.segments.push_back(std::move(s));
    }
  }
  return r;
}

json output_to_json(const RequestOutput& out, bool with_text) {
  json j;
  j["token_ids"] = out.token_ids;
  if (with_text) j["text"] = out.text;
  j["finish_reason"] = finish_reason_name(out.finish_reason);
  j["num_prompt_tokens"] = out.prompt_ids.size();
  j["num_cached_tokens"] = out.num_cached_tokens;
  if (!out.token_logprobs.empty()) j["logprobs"] = out.token_logprobs;
  if (!out.error.empty()) j["error"] = out.error;
  return j;
}

json stats_to_json(const EngineStats& s) {
  return json{{"kv_tokens_logical", s.kv_tokens_logical},
              {"kv_tokens_stored", s.kv_tokens_stored},
              {"kv_bytes_logical", s.kv_tokens_logical * s.kv_token_bytes},
              {"kv_bytes_stored", s.kv_tokens_stored * s.kv_token_bytes},
              {"chunk_hits", s.chunk_hits},
              {"chunk_misses", s.chunk_misses},
              {"chunk_evictions", s.chunk_evictions},
              {"peak_pages_used", s.peak_pages_used},
              {"pages_used", s.pages_used},
              {"pages_total", s.pages_total},
              {"cascade_steps", s.cascade_steps},
              {"max_levels_used", s.max_levels_used},
              {"steps", s.steps},
              {"prefill_tokens", s.prefill_tokens},
              {"decode_tokens", s.decode_tokens},
              {"overlapped_steps", s.overlapped_steps},
              {"preemptions", s.preemptions}};
}

json chunk_info_to_json(const ChunkInfo& c) {
  return json{{"id", c.id},
              {"kind", chunk_kind_name(c.kind)},
              {"num_tokens", c.num_tokens},
              {"num_computed", c.num_computed},
              {"ref_count", c.ref_count},
              {"metadata", c.metadata}};
}

json preview_to_json(const CompositionPreview& p) {
  return json{{"prompt_ids", p.prompt_ids},       {"chunk_ids", p.chunk_ids},
              {"chunk_cached", p.chunk_cached},   {"num_cached_tokens", p.num_cached_tokens},
              {"num_new_tokens", p.num_new_tokens}, {"cascade_levels", p.cascade_levels},
              {"kv_bytes_new", p.kv_bytes_new},   {"kv_bytes_logical", p.kv_bytes_logical}};
}

}  // namespace cascade
