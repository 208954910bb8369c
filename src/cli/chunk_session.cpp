#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cascade/llm.h"
#include "cli/commands.h"
#include "core/error.h"
#include "engine/request_json.h"
#include "tokenizer/tokenizer.h"

namespace cascade {

using nlohmann::json;

namespace {

json run_op(LLM& llm, const json& op) {
  if (!op.is_object() || !op.contains("op") || !op["op"].is_string()) {
    throw_error(ErrorCode::kInvalidArgument, "each line needs an \"op\" string");
  }
  const std::string name = op["op"].get<std::string>();
  auto get_id = [&]() {
    if (!op.contains("id") || !op["id"].is_string()) throw_error(ErrorCode::kInvalidArgument, "'{}' needs an \"id\" string", name);
    return op["id"].get<std::string>();
  };
  if (name == "register") {
    const std::string kind_name = op.value("kind", "context");
    auto kind = parse_chunk_kind(kind_name);
    if (!kind) throw_error(ErrorCode::kInvalidArgument, "unknown chunk kind '{}'", kind_name);
    std::map<std::string, std::string> meta;
    if (op.contains("metadata")) {
      for (auto& [k, v] : op["metadata"].items()) meta[k] = v.is_string() ? v.get<std::string>() : v.dump();
    }
    std::string id;
    if (op.contains("text")) {
      id = llm.register_chunk_text(*kind, op["text"].get<std::string>(), meta);
    } else if (op.contains("ids")) {
      id = llm.register_chunk(*kind, op["ids"].get<std::vector<std::int32_t>>(), meta);
    } else {
      throw_error(ErrorCode::kInvalidArgument, "'register' needs \"text\" or \"ids\"");
    }
    return json{{"id", id}};
  }
  if (name == "list") {
    json arr = json::array();
    for (const ChunkInfo& c : llm.list_chunks()) arr.push_back(chunk_info_to_json(c));
    return json{{"chunks", arr}};
  }
  if (name == "get") return chunk_info_to_json(llm.get_chunk(get_id()));
  if (name == "delete") {
    const std::string id = get_id();
    llm.delete_chunk(id);
    return json{{"deleted", id}};
  }
  if (name == "clear") {
    std::optional<ChunkKind> kind;
    if (op.contains("kind")) {
      kind = parse_chunk_kind(op["kind"].get<std::string>());
      if (!kind) throw_error(ErrorCode::kInvalidArgument, "unknown chunk kind");
    }
    return json{{"cleared", llm.clear_chunks(kind)}};
  }
  if (name == "stats") {
    const ChunkStats s = llm.chunk_stats();
    return json{{"hits", s.hits}, {"misses", s.misses}, {"evictions", s.evictions},
                {"tokens_saved", s.tokens_saved}, {"bytes_saved", s.bytes_saved}, {"num_chunks", s.num_chunks}};
  }
  if (name == "preview") return preview_to_json(llm.preview(parse_request_json(op, SamplingParams{})));
  if (name == "generate") {
    if (!op.contains("requests") || !op["requests"].is_array()) {
      throw_error(ErrorCode::kInvalidArgument, "'generate' needs a \"requests\" array");
    }
    SamplingParams defaults;
    defaults.temperature = 0.0f;
    std::vector<Request> reqs;
    for (const json& r : op["requests"]) reqs.push_back(parse_request_json(r, defaults));
    json outs = json::array();
    for (const RequestOutput& o : llm.generate(reqs)) outs.push_back(output_to_json(o, llm.tokenizer() != nullptr));
    return json{{"outputs", outs}, {"stats", stats_to_json(llm.stats())}};
  }
  throw_error(ErrorCode::kInvalidArgument, "unknown op '{}'", name);
}

}  // namespace

int run_chunk_session(const Config& config, const std::string& script_path) {
  std::ifstream in(script_path);
  if (!in) throw_error(ErrorCode::kNotFound, "{}: cannot open the script", script_path);
  LLM llm(config);
  std::string line;
  int lineno = 0, failed = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json result;
    try {
      result = run_op(llm, json::parse(line));
    } catch (const json::exception& e) {
      ++failed;
      result = json{{"error", {{"code", "parse_error"}, {"message", fmt::format("{}:{}: {}", script_path, lineno, e.what())}}}};
    } catch (const Error& e) {
      ++failed;
      result = json{{"error", {{"code", error_code_name(e.code())}, {"message", e.what()}}}};
    }
    std::cout << result.dump() << "\n" << std::flush;
  }
  return failed == 0 ? 0 : 1;
}

}  // namespace cascade
