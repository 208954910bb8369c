// The `cascade` command: generate, tokenize, chunks (a chunk-API session), serve.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cascade/llm.h"
#include "cli/commands.h"
#include "core/error.h"
#include "engine/request_json.h"
#include "tokenizer/chat_format.h"
#include "tokenizer/tokenizer.h"

using nlohmann::json;

namespace cascade {
namespace {

struct CommonOptions {
  std::string model;
  std::string device = "auto";
  int page_size = 16;
  double kv_cache_mb = 256;
  double chunk_page_ratio = 0.5;
  int chunk_registry_size = 1000;
  int max_num_seqs = 256;
  int max_num_batched_tokens = 4096;
  int max_model_len = 0;
  int max_cascade_levels = 3;
  std::string cascade = "auto";
  bool no_cache = false;
  bool no_overlap = false;
  std::uint64_t model_seed = 1234;
};

void add_common(CLI::App* app, CommonOptions& o) {
  app->add_option("--model", o.model, "Hugging Face Qwen3 folder (default: the embedded random model)");
  app->add_option("--device", o.device, "cpu, cuda or auto")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  app->add_option("--page-size", o.page_size, "KV tokens per page")->check(CLI::Range(1, 1024));
  app->add_option("--kv-cache-mb", o.kv_cache_mb, "KV cache memory budget in MiB")->check(CLI::PositiveNumber);
  app->add_option("--chunk-page-ratio", o.chunk_page_ratio, "share of pages for cached chunks")->check(CLI::Range(0.0, 1.0));
  app->add_option("--chunk-registry-size", o.chunk_registry_size, "most chunks kept")->check(CLI::PositiveNumber);
  app->add_option("--max-num-seqs", o.max_num_seqs, "most sequences per step")->check(CLI::PositiveNumber);
  app->add_option("--max-num-batched-tokens", o.max_num_batched_tokens, "most tokens per step")->check(CLI::PositiveNumber);
  app->add_option("--max-model-len", o.max_model_len, "context length (0: the model's)");
  app->add_option("--max-cascade-levels", o.max_cascade_levels, "cascade levels")->check(CLI::Range(1, 16));
  app->add_option("--cascade", o.cascade, "cascade attention: on, off or auto")->check(CLI::IsMember({"on", "off", "auto"}));
  app->add_flag("--no-cache", o.no_cache, "turn all chunk sharing off");
  app->add_flag("--no-overlap", o.no_overlap,
                "wait for each greedy step's tokens before enqueuing the next (overlap_scheduling off)");
  app->add_option("--model-seed", o.model_seed, "seed of the embedded default model's weights");
}

Config to_config(const CommonOptions& o) {
  Config c;
  c.model_dir = o.model;
  c.device = o.device == "cpu" ? Device::kCpu : o.device == "cuda" ? Device::kCuda : Device::kAuto;
  c.page_size = o.page_size;
  c.kv_cache_bytes = static_cast<std::size_t>(o.kv_cache_mb * 1024.0 * 1024.0);
  c.chunk_page_ratio = o.chunk_page_ratio;
  c.chunk_registry_size = o.chunk_registry_size;
  c.max_num_seqs = o.max_num_seqs;
  c.max_num_batched_tokens = o.max_num_batched_tokens;
  c.max_model_len = o.max_model_len;
  c.max_cascade_levels = o.max_cascade_levels;
  c.enable_prefix_cache = !o.no_cache;
  c.overlap_scheduling = !o.no_overlap;
  c.enable_cascade_attention = o.cascade != "off";
  c.cascade_mode = o.cascade == "on" ? CascadeMode::kOn : o.cascade == "off" ? CascadeMode::kOff : CascadeMode::kAuto;
  c.default_model_seed = o.model_seed;
  return c;
}

bool stderr_is_tty() { return isatty(fileno(stderr)) != 0; }

std::unique_ptr<LLM> load_llm(const Config& config) {
  const bool tty = stderr_is_tty();
  if (tty) std::fprintf(stderr, "loading %s ...", config.model_dir.empty() ? "embedded default model" : config.model_dir.c_str());
  auto t0 = std::chrono::steady_clock::now();
  auto llm = std::make_unique<LLM>(config);
  if (tty) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, " done (%.1f s)\n", s);
  }
  return llm;
}

std::vector<std::int32_t> parse_id_list(const std::string& s) {
  std::vector<std::int32_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    try {
      std::size_t used = 0;
      const long long v = std::stoll(item, &used);
      if (used != item.size() || v < 0 || v > INT32_MAX) throw std::invalid_argument(item);
      ids.push_back(static_cast<std::int32_t>(v));
    } catch (const std::exception&) {
      throw_error(ErrorCode::kInvalidArgument, "--prompt-ids: '{}' is not a token id", item);
    }
  }
  if (ids.empty()) throw_error(ErrorCode::kInvalidArgument, "--prompt-ids: no token ids given");
  return ids;
}

struct GenerateOptions {
  std::vector<std::string> prompt_ids;
  std::vector<std::string> prompts;
  std::string prompt_file;
  std::string requests_file;
  bool json_out = false;
  bool chat = false;
  bool enable_thinking = false;
  std::string system;
  SamplingParams sampling;
  std::uint64_t seed = 0;
  bool has_seed = false;
  std::string stop_token_ids;
  bool stats = false;
};

int run_generate(const CommonOptions& common, GenerateOptions& g) {
  if (g.has_seed) g.sampling.seed = g.seed;
  if (!g.stop_token_ids.empty()) g.sampling.stop_token_ids = parse_id_list(g.stop_token_ids);
  std::vector<Request> requests;
  auto add_text = [&](const std::string& text) {
    Request r;
    r.sampling = g.sampling;
    Segment s;
    s.kind = ChunkKind::kAuto;
    if (g.chat) {
      std::vector<ChatMessage> msgs;
      if (!g.system.empty()) msgs.push_back({"system", g.system});
      msgs.push_back({"user", text});
      s.text = apply_chat_template(msgs, /*add_generation_prompt=*/true, g.enable_thinking);
    } else {
      s.text = text;
    }
    r.segments.push_back(std::move(s));
    requests.push_back(std::move(r));
  };
  for (const std::string& ids : g.prompt_ids) {
    Request r;
    r.sampling = g.sampling;
    Segment s;
    s.kind = ChunkKind::kAuto;
    s.ids = parse_id_list(ids);
    r.segments.push_back(std::move(s));
    requests.push_back(std::move(r));
  }
  for (const std::string& p : g.prompts) add_text(p);
  if (!g.prompt_file.empty()) {
    std::ifstream in(g.prompt_file);
    if (!in) throw_error(ErrorCode::kNotFound, "{}: cannot open the prompt file", g.prompt_file);
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty()) add_text(line);
    }
  }
  const bool from_requests = !g.requests_file.empty();
  if (from_requests) {
    std::ifstream in(g.requests_file);
    if (!in) throw_error(ErrorCode::kNotFound, "{}: cannot open the requests file", g.requests_file);
    std::string line;
    int lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      try {
        requests.push_back(parse_request_json(json::parse(line), g.sampling));
      } catch (const json::exception& e) {
        throw_error(ErrorCode::kParse, "{}:{}: malformed JSON: {}", g.requests_file, lineno, e.what());
      } catch (const Error& e) {
        throw Error(e.code(), fmt::format("{}:{}: {}", g.requests_file, lineno, e.what()));
      }
    }
  }
  const bool default_batch = requests.empty();
  if (default_batch) {
    // The main job on the embedded default: a small batch of prompts sharing a system prompt.
    const char* demo[] = {"The cascade of pages", "Chunks are shared by", "A query reads its context",
                          "Hello, world"};
    for (const char* p : demo) add_text(p);
  }
  auto llm = load_llm(to_config(common));
  const bool tty = stderr_is_tty();
  const auto t0 = std::chrono::steady_clock::now();
  auto outputs = llm->generate(requests, [&](int done, int total) {
    if (tty) std::fprintf(stderr, "\rgenerating: %d/%d requests done", done, total);
  });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (tty) std::fprintf(stderr, "\n");
  const bool has_tok = llm->tokenizer() != nullptr;
  int failed = 0;
  std::int64_t generated = 0;
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    const RequestOutput& o = outputs[i];
    generated += static_cast<std::int64_t>(o.token_ids.size());
    if (!o.error.empty()) {
      ++failed;
      std::fprintf(stderr, "cascade: request %zu: error: %s\n", i, o.error.c_str());
    }
    if (g.json_out) {
      std::cout << output_to_json(o, has_tok).dump() << "\n";
    } else {
      std::cout << "[" << i << "] ";
      if (!o.error.empty()) {
        std::cout << "error: " << o.error << "\n";
        continue;
      }
      if (has_tok) {
        std::cout << json(o.text).dump() << "\n";
      } else {
        for (std::size_t k = 0; k < o.token_ids.size(); ++k) std::cout << (k ? "," : "") << o.token_ids[k];
        std::cout << "\n";
      }
    }
  }
  const EngineStats st = llm->stats();
  if (g.json_out && (from_requests || g.stats)) {
    std::cout << json{{"stats", stats_to_json(st)}}.dump() << "\n";
  } else if (!g.json_out) {
    std::cout << fmt::format("{} requests, {} tokens generated in {:.2f} s ({:.1f} tokens/s); "
                             "KV tokens stored {} of {} logical; chunk hits {}, misses {}\n",
                             outputs.size(), generated, secs, generated / std::max(secs, 1e-9),
                             st.kv_tokens_stored, st.kv_tokens_logical, st.chunk_hits, st.chunk_misses);
  }
  return failed == 0 ? 0 : 1;
}

int run_tokenize(const std::string& model, const std::string& tokenizer_file, const std::string& text,
                 bool json_out, bool decode_flag) {
  std::unique_ptr<Tokenizer> tok;
  if (!tokenizer_file.empty()) {
    tok = Tokenizer::from_file(tokenizer_file);
  } else if (!model.empty()) {
    const std::string path = model + "/tokenizer.json";
    tok = Tokenizer::from_file(path);
  } else {
    tok = Tokenizer::byte_level_default();
  }
  if (decode_flag) {
    const auto ids = parse_id_list(text);
    const std::string s = tok->decode(ids);
    if (json_out) std::cout << json{{"text", s}}.dump() << "\n";
    else std::cout << s << "\n";
    return 0;
  }
  const auto ids = tok->encode(text);
  if (json_out) {
    std::cout << json{{"ids", ids}}.dump() << "\n";
  } else {
    for (std::size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
    std::cout << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace cascade

int main(int argc, char** argv) {
  using namespace cascade;
  CLI::App app{"cascade: LLM inference with compositional context caching"};
  app.require_subcommand(1);

  CommonOptions gen_common;
  GenerateOptions g;
  g.sampling.max_tokens = 16;
  g.sampling.temperature = 0.0f;
  CLI::App* gen = app.add_subcommand("generate", "run a batch of prompts and print the outputs");
  add_common(gen, gen_common);
  gen->add_option("--prompt-ids", g.prompt_ids, "comma-separated token ids (repeatable: one prompt each)");
  gen->add_option("--prompt", g.prompts, "prompt text (repeatable)");
  gen->add_option("--prompt-file", g.prompt_file, "file with one prompt per line");
  gen->add_option("--requests", g.requests_file, "JSONL file, one request (segments or prompt) per line");
  gen->add_option("--max-tokens", g.sampling.max_tokens, "tokens to generate")->check(CLI::Range(1, 1 << 20));
  gen->add_option("--temperature", g.sampling.temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  gen->add_option("--top-k", g.sampling.top_k, "0 = off");
  gen->add_option("--top-p", g.sampling.top_p, "1 = off");
  gen->add_option("--min-p", g.sampling.min_p, "0 = off");
  gen->add_option("--seed", g.seed, "sampling seed")->each([&](const std::string&) { g.has_seed = true; });
  gen->add_option("--stop", g.sampling.stop, "stop string (repeatable)");
  gen->add_option("--stop-token-ids", g.stop_token_ids, "comma-separated stop token ids");
  gen->add_flag("--ignore-eos", g.sampling.ignore_eos, "keep going past EOS");
  gen->add_flag("--json", g.json_out, "one JSON object per request per line");
  gen->add_flag("--stats", g.stats, "with --json: print the stats line also for plain prompts");
  gen->add_flag("--chat", g.chat, "wrap text prompts in the Qwen3 chat format");
  gen->add_option("--system", g.system, "system message for --chat");
  gen->add_flag("--enable-thinking", g.enable_thinking, "with --chat: let the model think");

  std::string tok_model, tok_file, tok_text;
  bool tok_json = false, tok_decode = false;
  CLI::App* tokc = app.add_subcommand("tokenize", "encode text with a tokenizer.json");
  tokc->add_option("--model", tok_model, "model folder holding tokenizer.json");
  tokc->add_option("--tokenizer", tok_file, "path of a tokenizer.json");
  tokc->add_option("--text", tok_text, "text to encode (with --decode: comma-separated ids)")->required();
  tokc->add_flag("--json", tok_json, "print {\"ids\": [...]}");
  tokc->add_flag("--decode", tok_decode, "decode ids instead");

  CommonOptions chunk_common;
  std::string script;
  CLI::App* chunks = app.add_subcommand("chunks", "run a chunk-API session from a JSONL script (see docs)");
  add_common(chunks, chunk_common);
  chunks->add_option("--script", script, "JSONL file of operations")->required();

  CommonOptions serve_common;
  ServeOptions serve_opts;
  CLI::App* serve = app.add_subcommand("serve", "OpenAI-compatible HTTP server");
  add_common(serve, serve_common);
  add_serve_options(serve, serve_opts);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*gen) return run_generate(gen_common, g);
    if (*tokc) return run_tokenize(tok_model, tok_file, tok_text, tok_json, tok_decode);
    if (*chunks) return run_chunk_session(to_config(chunk_common), script);
    if (*serve) return run_serve(to_config(serve_common), serve_opts);
  } catch (const Error& e) {
    std::fprintf(stderr, "cascade: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cascade: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
