#include "server/openai_api.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "cache/context_chunk.h"
#include "core/error.h"
#include "engine/request_json.h"
#include "engine/sampler.h"
#include "tokenizer/chat_format.h"
#include "tokenizer/tokenizer.h"

namespace cascade {
namespace {

using nlohmann::json;

[[noreturn]] void fail(std::string message, std::string param = "", std::string code = "") {
  throw ApiException(bad_request(std::move(message), std::move(param), std::move(code)));
}

bool present(const json& j, const char* name) { return j.contains(name) && !j[name].is_null(); }

// An integer field in [lo, hi], or nullopt when absent/null.
std::optional<std::int64_t> opt_int(const json& j, const char* name, std::int64_t lo, std::int64_t hi) {
  if (!present(j, name)) return std::nullopt;
  const json& v = j[name];
  if (!v.is_number_integer()) fail(fmt::format("'{}' must be an integer, got {}", name, dump_json(v)), name);
  if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(hi)) {
    fail(fmt::format("'{}' must be in [{}, {}], got {}", name, lo, hi, dump_json(v)), name);
  }
  const std::int64_t x = v.get<std::int64_t>();
  if (x < lo || x > hi) fail(fmt::format("'{}' must be in [{}, {}], got {}", name, lo, hi, x), name);
  return x;
}

std::optional<double> opt_number(const json& j, const char* name) {
  if (!present(j, name)) return std::nullopt;
  if (!j[name].is_number()) fail(fmt::format("'{}' must be a number, got {}", name, dump_json(j[name])), name);
  return j[name].get<double>();
}

std::optional<bool> opt_bool(const json& j, const char* name) {
  if (!present(j, name)) return std::nullopt;
  if (!j[name].is_boolean()) fail(fmt::format("'{}' must be a boolean, got {}", name, dump_json(j[name])), name);
  return j[name].get<bool>();
}

std::vector<std::int32_t> token_ids(const json& v, const char* param, int vocab_size) {
  std::vector<std::int32_t> ids;
  ids.reserve(v.size());
  for (const json& e : v) {
    if (!e.is_number_integer()) fail(fmt::format("'{}' must hold token ids (integers), found {}", param, dump_json(e)), param);
    const std::int64_t x = e.is_number_unsigned() && e.get<std::uint64_t>() > INT32_MAX ? -1 : e.get<std::int64_t>();
    if (x < 0 || x >= vocab_size) {
      fail(fmt::format("token id {} in '{}' is outside the vocabulary [0, {})", dump_json(e), param, vocab_size), param);
    }
    ids.push_back(static_cast<std::int32_t>(x));
  }
  return ids;
}

std::vector<std::int32_t> encode(const ModelInfo& model, const std::string& text, const char* param) {
  if (model.tokenizer == nullptr) {
    fail(fmt::format("'{}': the model has no tokenizer.json, so send token ids instead of text", param), param);
  }
  try {
    return model.tokenizer->encode(text);
  } catch (const Error& e) {
    fail(fmt::format("'{}': {}", param, e.what()), param);
  }
}

void check_model(const json& body, const ModelInfo& model) {
  if (!present(body, "model")) return;
  if (!body["model"].is_string()) fail("'model' must be a string", "model");
  const std::string name = body["model"].get<std::string>();
  if (name != model.name) {
    ApiError e;
    e.status = 404;
    e.type = "not_found_error";
    e.param = "model";
    e.code = "model_not_found";
    e.message = fmt::format("The model '{}' does not exist; this server serves '{}'", name, model.name);
    throw ApiException(e);
  }
}

// Sampling fields common to both endpoints, type- and range-checked here so that the shared parser
// (parse_sampling_json) never sees a value it would silently truncate.
SamplingParams parse_sampling(const json& body, const ModelInfo& model, int default_max_tokens) {
  const std::int64_t ctx = model.max_model_len;
  opt_int(body, "max_tokens", 1, ctx);
  opt_int(body, "top_k", -1, std::numeric_limits<std::int32_t>::max());
  opt_number(body, "temperature");
  opt_number(body, "top_p");
  opt_number(body, "min_p");
  opt_bool(body, "ignore_eos");
  if (present(body, "seed") && !body["seed"].is_number_integer()) fail("'seed' must be an integer", "seed");
  if (present(body, "stop")) {
    const json& s = body["stop"];
    const bool ok = s.is_string() || (s.is_array() && std::all_of(s.begin(), s.end(), [](const json& e) {
                                        return e.is_string();
                                      }));
    if (!ok) fail("'stop' must be a string or an array of strings", "stop");
  }
  if (present(body, "stop_token_ids")) {
    if (!body["stop_token_ids"].is_array()) fail("'stop_token_ids' must be an array of token ids", "stop_token_ids");
    token_ids(body["stop_token_ids"], "stop_token_ids", std::numeric_limits<std::int32_t>::max());
  }
  // Only the fields the shared parser knows, so a chat `logprobs: true` (unsupported) is not passed on.
  json fields = json::object();
  for (const char* k : {"max_tokens", "temperature", "top_k", "top_p", "min_p", "ignore_eos", "stop",
                        "stop_token_ids"}) {
    if (present(body, k)) fields[k] = body[k];
  }
  SamplingParams defaults;
  defaults.max_tokens = default_max_tokens;
  defaults.temperature = 1.0f;  // OpenAI's default
  SamplingParams p;
  try {
    p = parse_sampling_json(fields, defaults);
  } catch (const Error& e) {
    fail(e.what());
  }
  if (present(body, "seed")) {
    // Any JSON integer: negative seeds (allowed by OpenAI) map to their two's-complement bits.
    const json& s = body["seed"];
    p.seed = s.is_number_unsigned() ? s.get<std::uint64_t>() : static_cast<std::uint64_t>(s.get<std::int64_t>());
  }
  p.logprobs = false;
  try {
    validate_sampling_params(p);
  } catch (const Error& e) {
    fail(e.what());
  }
  return p;
}

// Known prompt length (chunk ids excluded: only the engine knows them) against the context.
void check_length(const std::vector<Segment>& segments, const SamplingParams& p, const ModelInfo& model,
                  bool max_tokens_given) {
  std::int64_t known = 0;
  for (const Segment& s : segments) known += static_cast<std::int64_t>(s.ids.size());
  if (known >= model.max_model_len) {
    fail(fmt::format("This model's maximum context length is {} tokens, but the prompt has {} tokens",
                     model.max_model_len, known),
         "prompt", "context_length_exceeded");
  }
  if (max_tokens_given && known + p.max_tokens > model.max_model_len) {
    fail(fmt::format("This model's maximum context length is {} tokens, but {} were requested ({} in "
                     "the prompt, {} for the completion); lower max_tokens",
                     model.max_model_len, known + p.max_tokens, known, p.max_tokens),
         "max_tokens", "context_length_exceeded");
  }
}

void parse_common(const json& body, GenerationCall& call) {
  call.stream = opt_bool(body, "stream").value_or(false);
  if (present(body, "stream_options")) {
    const json& so = body["stream_options"];
    if (!so.is_object()) fail("'stream_options' must be an object", "stream_options");
    call.include_usage = opt_bool(so, "include_usage").value_or(false);
  }
  call.return_token_ids = opt_bool(body, "return_token_ids").value_or(false);
}

std::vector<Request> replicate(Request r, const json& body) {
  const int n = static_cast<int>(opt_int(body, "n", 1, kMaxChoices).value_or(1));
  std::vector<Request> out;
  for (int i = 0; i < n; ++i) {
    Request c = r;
    // Choices must differ: choice i draws from seed + i (the engine picks distinct seeds when unset).
    if (c.sampling.seed && i > 0) c.sampling.seed = *c.sampling.seed + static_cast<std::uint64_t>(i);
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace

json parse_body(const std::string& body) {
  try {
    return json::parse(body);
  } catch (const json::parse_error& e) {
    const std::string what = e.what();
    if (what.find("UTF-8") != std::string::npos || what.find("surrogate") != std::string::npos) {
      fail(fmt::format("the request body is not valid UTF-8 at byte {}", e.byte), "", "invalid_utf8");
    }
    fail(fmt::format("the request body is not valid JSON: {}", what), "", "invalid_json");
  }
}

GenerationCall parse_completion_request(const json& body, const ModelInfo& model) {
  if (!body.is_object()) fail("the request body must be a JSON object");
  check_model(body, model);
  GenerationCall call;
  parse_common(body, call);
  Request r;
  r.sampling = parse_sampling(body, model, 16);
  const bool has_prompt = present(body, "prompt");
  const bool has_segments = present(body, "segments");
  if (has_prompt == has_segments) fail("give exactly one of 'prompt' or 'segments'", has_prompt ? "segments" : "prompt");
  if (has_prompt) {
    json p = body["prompt"];
    // A list holding one prompt (string or ids) is that prompt; several prompts are a batch.
    if (p.is_array() && p.size() == 1 && (p[0].is_string() || p[0].is_array())) p = json(p[0]);
    Segment s;
    s.kind = ChunkKind::kAuto;
    if (p.is_string()) {
      s.ids = encode(model, p.get<std::string>(), "prompt");
    } else if (p.is_array() && std::all_of(p.begin(), p.end(), [](const json& e) { return e.is_number(); })) {
      s.ids = token_ids(p, "prompt", model.vocab_size);
    } else if (p.is_array() && !p.empty()) {
      fail("several prompts in one request are not supported; send one request per prompt", "prompt");
    } else {
      fail("'prompt' must be a string or an array of token ids", "prompt");
    }
    if (s.ids.empty()) fail("the prompt is empty", "prompt");
    r.segments.push_back(std::move(s));
  } else {
    Request parsed;
    try {
      parsed = parse_request_json(json{{"segments", body["segments"]}}, r.sampling);
    } catch (const Error& e) {
      fail(e.what(), "segments");
    }
    for (Segment& s : parsed.segments) {
      if (s.text) {
        s.ids = encode(model, *s.text, "segments");
        s.text.reset();
        if (s.ids.empty()) fail("a segment's text encodes to no tokens", "segments");
      } else if (s.chunk_id) {
        require_chunk_id_form(*s.chunk_id);
      } else {
        for (std::int32_t t : s.ids) {
          if (t >= model.vocab_size) {
            fail(fmt::format("token id {} in 'segments' is outside the vocabulary [0, {})", t, model.vocab_size), "segments");
          }
        }
        if (s.ids.empty()) fail("a segment's 'ids' is empty", "segments");
      }
    }
    r.segments = std::move(parsed.segments);
  }
  check_length(r.segments, r.sampling, model, present(body, "max_tokens"));
  call.requests = replicate(std::move(r), body);
  return call;
}

GenerationCall parse_chat_request(const json& body, const ModelInfo& model) {
  if (!body.is_object()) fail("the request body must be a JSON object");
  check_model(body, model);
  GenerationCall call;
  call.chat = true;
  parse_common(body, call);
  if (!present(body, "messages") || !body["messages"].is_array() || body["messages"].empty()) {
    fail("'messages' must be a non-empty array", "messages");
  }
  std::vector<ChatMessage> messages;
  for (const json& m : body["messages"]) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
      fail("each message must be an object with a string 'role'", "messages");
    }
    ChatMessage msg;
    msg.role = m["role"].get<std::string>();
    if (msg.role == "developer") msg.role = "system";  // OpenAI's newer name for it
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant" && msg.role != "tool") {
      fail(fmt::format("unknown message role '{}' (system, user, assistant, tool)", msg.role), "messages");
    }
    const json c = m.contains("content") ? m["content"] : json(nullptr);
    if (c.is_string()) {
      msg.content = c.get<std::string>();
    } else if (c.is_array()) {
      for (const json& part : c) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string()) {
          fail("only text content parts ({\"type\": \"text\", \"text\": ...}) are supported", "messages");
        }
        msg.content += part["text"].get<std::string>();
      }
    } else if (!(c.is_null() && msg.role == "assistant")) {
      fail("a message's 'content' must be a string or an array of text parts", "messages");
    }
    messages.push_back(std::move(msg));
  }
  bool thinking = true;  // Qwen3's template default
  if (present(body, "chat_template_kwargs")) {
    const json& kw = body["chat_template_kwargs"];
    if (!kw.is_object()) fail("'chat_template_kwargs' must be an object", "chat_template_kwargs");
    thinking = opt_bool(kw, "enable_thinking").value_or(thinking);
  }
  thinking = opt_bool(body, "enable_thinking").value_or(thinking);
  std::string text;
  try {
    text = apply_chat_template(messages, /*add_generation_prompt=*/true, thinking);
  } catch (const Error& e) {
    fail(e.what(), "messages");
  }
  Segment s;
  s.kind = ChunkKind::kAuto;
  s.ids = encode(model, text, "messages");
  // Chat's default is "as much as the context allows"; max_completion_tokens is OpenAI's newer name.
  json b = body;
  if (!present(b, "max_tokens") && present(b, "max_completion_tokens")) b["max_tokens"] = b["max_completion_tokens"];
  const int room = std::max(1, model.max_model_len - static_cast<int>(s.ids.size()));
  Request r;
  r.sampling = parse_sampling(b, model, room);
  r.segments.push_back(std::move(s));
  check_length(r.segments, r.sampling, model, present(b, "max_tokens"));
  call.requests = replicate(std::move(r), body);
  return call;
}

ChunkRegistration parse_chunk_registration(const json& body, const ModelInfo& model) {
  if (!body.is_object()) fail("the request body must be a JSON object");
  ChunkRegistration c;
  if (present(body, "kind")) {
    if (!body["kind"].is_string()) fail("'kind' must be a string", "kind");
    auto k = parse_chunk_kind(body["kind"].get<std::string>());
    if (!k) fail(fmt::format("unknown chunk kind '{}' (system, context, query, auto)", body["kind"].get<std::string>()), "kind");
    c.kind = *k;
  }
  const bool has_text = present(body, "text");
  const bool has_ids = present(body, "ids");
  if (has_text == has_ids) fail("give exactly one of 'text' or 'ids'", has_text ? "ids" : "text");
  if (has_text) {
    if (!body["text"].is_string()) fail("'text' must be a string", "text");
    c.ids = encode(model, body["text"].get<std::string>(), "text");
  } else {
    if (!body["ids"].is_array()) fail("'ids' must be an array of token ids", "ids");
    c.ids = token_ids(body["ids"], "ids", model.vocab_size);
  }
  if (c.ids.empty()) fail("a chunk needs at least one token", has_text ? "text" : "ids");
  if (static_cast<std::int64_t>(c.ids.size()) >= model.max_model_len) {
    fail(fmt::format("the chunk has {} tokens; the model's context is {}", c.ids.size(), model.max_model_len),
         has_text ? "text" : "ids", "context_length_exceeded");
  }
  if (present(body, "metadata")) {
    const json& m = body["metadata"];
    if (!m.is_object()) fail("'metadata' must be an object of strings", "metadata");
    for (const auto& [k, v] : m.items()) {
      if (!v.is_string()) fail(fmt::format("metadata '{}' must be a string", k), "metadata");
      c.metadata[k] = v.get<std::string>();
    }
  }
  return c;
}

const char* openai_finish_reason(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kAbort: return "abort";
    case FinishReason::kNone: break;
  }
  return "stop";
}

json usage_json(const std::vector<ChoiceResult>& choices) {
  int prompt = 0, completion = 0;
  int cached = std::numeric_limits<int>::max();
  for (const ChoiceResult& c : choices) {
    prompt = std::max(prompt, c.prompt_tokens);
    completion += c.completion_tokens;
    cached = std::min(cached, c.cached_tokens);
  }
  if (choices.empty()) cached = 0;
  return json{{"prompt_tokens", prompt},
              {"completion_tokens", completion},
              {"total_tokens", prompt + completion},
              {"prompt_tokens_details", {{"cached_tokens", cached}}}};
}

json completion_response(const GenerationCall& call, const std::string& id, std::int64_t created,
                         const std::string& model, const std::vector<ChoiceResult>& choices) {
  json out_choices = json::array();
  for (std::size_t i = 0; i < choices.size(); ++i) {
    const ChoiceResult& c = choices[i];
    json ch;
    ch["index"] = i;
    if (call.chat) {
      ch["message"] = json{{"role", "assistant"}, {"content", c.text}};
    } else {
      ch["text"] = c.text;
    }
    ch["logprobs"] = nullptr;
    ch["finish_reason"] = openai_finish_reason(c.finish_reason);
    if (call.return_token_ids) ch["token_ids"] = c.token_ids;
    out_choices.push_back(std::move(ch));
  }
  return json{{"id", id},
              {"object", call.chat ? "chat.completion" : "text_completion"},
              {"created", created},
              {"model", model},
              {"choices", std::move(out_choices)},
              {"usage", usage_json(choices)}};
}

json stream_chunk(const GenerationCall& call, const std::string& id, std::int64_t created,
                  const std::string& model, const ChoiceEvent& ev) {
  json ch;
  ch["index"] = ev.index;
  if (call.chat) {
    ch["delta"] = ev.text.empty() && ev.finished ? json::object() : json{{"content", ev.text}};
  } else {
    ch["text"] = ev.text;
  }
  ch["logprobs"] = nullptr;
  ch["finish_reason"] = ev.finished ? json(openai_finish_reason(ev.finish_reason)) : json(nullptr);
  if (call.return_token_ids) ch["token_ids"] = ev.token_ids;
  return json{{"id", id},
              {"object", call.chat ? "chat.completion.chunk" : "text_completion"},
              {"created", created},
              {"model", model},
              {"choices", json::array({std::move(ch)})}};
}

json stream_role_chunk(const std::string& id, std::int64_t created, const std::string& model, int index) {
  json ch{{"index", index},
          {"delta", {{"role", "assistant"}, {"content", ""}}},
          {"logprobs", nullptr},
          {"finish_reason", nullptr}};
  return json{{"id", id},
              {"object", "chat.completion.chunk"},
              {"created", created},
              {"model", model},
              {"choices", json::array({std::move(ch)})}};
}

json stream_usage_chunk(const GenerationCall& call, const std::string& id, std::int64_t created,
                        const std::string& model, const std::vector<ChoiceResult>& choices) {
  return json{{"id", id},
              {"object", call.chat ? "chat.completion.chunk" : "text_completion"},
              {"created", created},
              {"model", model},
              {"choices", json::array()},
              {"usage", usage_json(choices)}};
}

void require_chunk_id_form(const std::string& id) {
  if (!chunk_id_from_hex(id)) {
    throw_error(ErrorCode::kNotFound, "no chunk has the id '{}' (chunk ids are 64 hex digits)", id);
  }
}

}  // namespace cascade
