// Times cascade::Tokenizer::encode (single thread) on the tokenizer fixture corpus repeated to
// ~1 MB, the same input bench/tokenizer_bench.py gives HF tokenizers.
//   tokenizer_bench [TOKENIZER_JSON] [CORPUS_JSON] [TARGET_BYTES]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw cascade::Error(cascade::ErrorCode::kNotFound, path + ": cannot open");
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string tok_path = argc > 1 ? argv[1] : "../shared/data/qwen3-tokenizer/tokenizer.json";
    const std::string corpus_path = argc > 2 ? argv[2] : "tests/fixtures/tokenizer/corpus.json";
    const std::size_t target = argc > 3 ? std::stoull(argv[3]) : (1u << 20);

    const auto strings = nlohmann::json::parse(read_file(corpus_path)).get<std::vector<std::string>>();
    std::vector<std::string> docs;
    std::size_t total = 0;
    while (total < target) {  // whole passes over the corpus until ~target bytes
      for (const auto& s : strings) {
        docs.push_back(s);
        total += s.size();
      }
    }
    auto t0 = std::chrono::steady_clock::now();
    const auto tok = cascade::Tokenizer::from_file(tok_path);
    std::printf("load: %.1f ms (vocab %d)\n", seconds_since(t0) * 1e3, tok->vocab_size());
    tok->encode(strings[1]);  // warm up

    double best = 1e30;
    std::size_t n_tokens = 0;
    for (int rep = 0; rep < 5; ++rep) {
      t0 = std::chrono::steady_clock::now();
      n_tokens = 0;
      for (const auto& d : docs) n_tokens += tok->encode(d).size();
      const double dt = seconds_since(t0);
      best = std::min(best, dt);
      std::printf("rep %d/5: %.1f ms\n", rep + 1, dt * 1e3);
    }
    std::printf("cascade per-doc: %zu docs, %zu bytes, %zu tokens, best %.1f ms, %.2f M tokens/s, %.2f MB/s\n",
                docs.size(), total, n_tokens, best * 1e3, n_tokens / best / 1e6, total / best / 1e6);

    // One ~1 MB document: no per-call overhead.
    std::string joined;
    for (std::size_t i = 0; i < docs.size(); ++i) {
      if (i > 0) joined += '\n';
      joined += docs[i];
    }
    best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      t0 = std::chrono::steady_clock::now();
      n_tokens = tok->encode(joined).size();
      best = std::min(best, seconds_since(t0));
    }
    std::printf("cascade joined: %zu bytes, %zu tokens, best %.1f ms, %.2f M tokens/s, %.2f MB/s\n",
                joined.size(), n_tokens, best * 1e3, n_tokens / best / 1e6, joined.size() / best / 1e6);

    // Decode throughput on the same ids, for reference.
    std::vector<std::vector<int32_t>> ids;
    for (const auto& d : docs) ids.push_back(tok->encode(d));
    t0 = std::chrono::steady_clock::now();
    std::size_t out_bytes = 0;
    for (const auto& v : ids) out_bytes += tok->decode(v).size();
    const double dt = seconds_since(t0);
    std::printf("decode: %.1f ms, %.2f MB/s\n", dt * 1e3, out_bytes / dt / 1e6);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokenizer_bench: %s\n", e.what());
    return 1;
  }
}
