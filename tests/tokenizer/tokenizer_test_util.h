// Shared helpers for the tokenizer tests: fixture paths and a Qwen3 tokenizer loaded once.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "tokenizer/tokenizer.h"

namespace cascade::testing {

inline std::filesystem::path qwen3_tokenizer_dir() {
  return std::filesystem::path(CASCADE_SOURCE_DIR) / ".." / "shared" / "data" / "qwen3-tokenizer";
}

inline std::filesystem::path tokenizer_fixture(const std::string& name) {
  return std::filesystem::path(CASCADE_SOURCE_DIR) / "tests" / "fixtures" / "tokenizer" / name;
}

inline nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open fixture " + path.string());
  std::ostringstream buf;
  buf << in.rdbuf();
  return nlohmann::json::parse(buf.str());
}

// The real Qwen3 tokenizer, or null when shared/ is not beside the repository.
inline const Tokenizer* qwen3_tokenizer() {
  static const std::unique_ptr<Tokenizer> tok = []() -> std::unique_ptr<Tokenizer> {
    const auto path = qwen3_tokenizer_dir() / "tokenizer.json";
    if (!std::filesystem::exists(path)) return nullptr;
    return Tokenizer::from_file(path);
  }();
  return tok.get();
}

}  // namespace cascade::testing

#define CASCADE_REQUIRE_QWEN3_TOKENIZER(var)                                                    \
  const ::cascade::Tokenizer* var = ::cascade::testing::qwen3_tokenizer();                      \
  if (var == nullptr) {                                                                         \
    GTEST_SKIP() << "Qwen3 tokenizer not found at "                                             \
                 << ::cascade::testing::qwen3_tokenizer_dir().string()                          \
                 << " (shared/ must be cloned beside the repository)";                          \
  }
