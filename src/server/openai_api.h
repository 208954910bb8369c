// OpenAI request bodies → native requests, and native results → OpenAI response bodies. Runs on
// HTTP threads: everything here is validated before it reaches the engine thread. Unknown fields are
// ignored, as the OpenAI API does (so clients sending e.g. `user` or `logit_bias` still work).
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "cascade/request.h"
#include "server/api_error.h"
#include "server/engine_loop.h"

namespace cascade {

class Tokenizer;

// Thrown by the parsers; the HTTP layer turns it into the error response.
class ApiException : public std::runtime_error {
 public:
  explicit ApiException(ApiError e) : std::runtime_error(e.message), error(std::move(e)) {}
  ApiError error;
};

// What a parser needs to know about the model.
struct ModelInfo {
  std::string name;
  const Tokenizer* tokenizer = nullptr;
  int max_model_len = 0;
  int vocab_size = 0;
};

// One completions or chat call: a request per choice (n), plus how to answer.
struct GenerationCall {
  bool chat = false;
  bool stream = false;
  bool include_usage = false;     // stream_options.include_usage
  bool return_token_ids = false;  // extension: each choice also lists its token ids
  std::vector<Request> requests;  // requests[i] produces choice i
};

// Most choices one call may ask for (n).
inline constexpr int kMaxChoices = 16;

// POST /v1/completions: `prompt` (string, token ids, or a one-element list of either) or the
// extension `segments` (composition of registered chunk ids, ids and text). Throws ApiException.
GenerationCall parse_completion_request(const nlohmann::json& body, const ModelInfo& model);
// POST /v1/chat/completions: `messages` rendered by the Qwen3 chat template; `enable_thinking`
// top-level or in `chat_template_kwargs`. Throws ApiException.
GenerationCall parse_chat_request(const nlohmann::json& body, const ModelInfo& model);

// POST /v1/chunks body: {"text"|"ids", "kind" (default context), "metadata": {str: str}}.
struct ChunkRegistration {
  ChunkKind kind = ChunkKind::kContext;
  std::vector<std::int32_t> ids;
  std::map<std::string, std::string> metadata;
};
ChunkRegistration parse_chunk_registration(const nlohmann::json& body, const ModelInfo& model);

// Parses a request body; malformed JSON or invalid UTF-8 is a 400 naming the position.
nlohmann::json parse_body(const std::string& body);

// Throws cascade::Error(kNotFound) naming `id` unless it has the form of a chunk id (64 hex
// digits): over HTTP every id that names no chunk, malformed or not, is a 404.
void require_chunk_id_form(const std::string& id);

// Accumulated result of one choice.
struct ChoiceResult {
  std::string text;
  std::vector<std::int32_t> token_ids;
  FinishReason finish_reason = FinishReason::kNone;
  std::string error;
  bool finished = false;
  int prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0;
};

// OpenAI finish_reason: "stop", "length", or "abort" (the engine gave up on the request).
const char* openai_finish_reason(FinishReason reason);

// usage object over all choices (prompt counted once; cached_tokens of the least-cached choice).
nlohmann::json usage_json(const std::vector<ChoiceResult>& choices);

// The whole non-streaming response body.
nlohmann::json completion_response(const GenerationCall& call, const std::string& id,
                                   std::int64_t created, const std::string& model,
                                   const std::vector<ChoiceResult>& choices);

// One streamed chunk for event `ev` (chat: a delta; completions: a text piece).
nlohmann::json stream_chunk(const GenerationCall& call, const std::string& id, std::int64_t created,
                            const std::string& model, const ChoiceEvent& ev);
// The first chat chunk of a choice: delta {"role": "assistant", "content": ""}.
nlohmann::json stream_role_chunk(const std::string& id, std::int64_t created, const std::string& model,
                                 int index);
// The final chunk with usage and no choices (stream_options.include_usage).
nlohmann::json stream_usage_chunk(const GenerationCall& call, const std::string& id,
                                  std::int64_t created, const std::string& model,
                                  const std::vector<ChoiceResult>& choices);

}  // namespace cascade
