// The `cascade` program's interface, as other checks run it: generate (--prompt-ids, --requests,
// --no-cache, --cascade), tokenize, chunks; outputs compared with references made by transformers
// and HF tokenizers (tests/fixtures), errors reported with a non-zero exit and a message.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/run_command.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kCascade = std::string(CASCADE_BINARY_DIR) + "/cascade";
const fs::path kSource = CASCADE_SOURCE_DIR;

using RunResult = cascade::test::CommandResult;

// ctest runs each test as its own process, several at once: every temporary file is named per process.
fs::path temp_file(const std::string& name) { return cascade::test::process_temp_file("cascade_cli_test", name); }

RunResult run(const std::string& args) {
  return cascade::test::run_command(kCascade + " " + args + " 2>" + temp_file("stderr").string());
}

std::string stderr_text() {
  std::ifstream in(temp_file("stderr"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<json> json_lines(const std::string& out) {
  std::vector<json> lines;
  std::stringstream ss(out);
  std::string line;
  while (std::getline(ss, line)) {
    if (!line.empty()) lines.push_back(json::parse(line));
  }
  return lines;
}

std::string join(const std::vector<int>& ids) {
  std::string s;
  for (std::size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

TEST(Cli, GenerateMatchesTransformersGreedy) {
  const fs::path dir = kSource / "tests/fixtures/models/gqa";
  std::ifstream in(dir / "reference.json");
  const json ref = json::parse(in);
  std::string args = "generate --model " + dir.string() + " --max-tokens 12 --temperature 0 --json --ignore-eos";
  for (const auto& p : ref["prompts"]) args += " --prompt-ids " + join(p.get<std::vector<int>>());
  const RunResult r = run(args);
  ASSERT_EQ(r.status, 0) << stderr_text();
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), ref["prompts"].size());  // one line per prompt, no extra lines
  for (std::size_t p = 0; p < lines.size(); ++p) {
    const auto got = lines[p]["token_ids"].get<std::vector<int>>();
    const auto want = ref["greedy"][p].get<std::vector<int>>();
    const auto margins = ref["greedy_margins"][p].get<std::vector<double>>();
    for (std::size_t i = 0; i < want.size() && margins[i] > 1e-3; ++i) EXPECT_EQ(got.at(i), want[i]);
    EXPECT_FALSE(lines[p].contains("text"));  // the fixture folder has no tokenizer.json
  }
}

TEST(Cli, TokenizeMatchesHfTokenizers) {
  const fs::path tok = kSource.parent_path() / "shared/data/qwen3-tokenizer/tokenizer.json";
  if (!fs::exists(tok)) GTEST_SKIP() << tok << " not present";
  std::ifstream in(kSource / "tests/fixtures/tokenizer/expected_ids.json");
  const json expected = json::parse(in);
  std::ifstream cin(kSource / "tests/fixtures/tokenizer/corpus.json");
  const json corpus = json::parse(cin);
  ASSERT_EQ(corpus.size(), expected["cases"].size());
  // A few entries of the HF-made fixture, passed through the command line.
  int checked = 0;
  for (std::size_t i = 0; i < corpus.size(); ++i) {
    const json& e = expected["cases"][i];
    const std::string text = corpus[i].get<std::string>();
    if (text.empty() || text.find('\'') != std::string::npos || text.find('\n') != std::string::npos) continue;
    const RunResult r = run("tokenize --tokenizer " + tok.string() + " --json --text '" + text + "'");
    ASSERT_EQ(r.status, 0) << stderr_text();
    EXPECT_EQ(json::parse(r.out)["ids"], e["ids"]) << text;
    if (++checked == 5) break;
  }
  EXPECT_EQ(checked, 5);
}

fs::path write_requests() {
  const fs::path p = temp_file("requests.jsonl");
  std::ofstream out(p);
  const json sys = json::array({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20});
  const json doc_a = json::array({30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48});
  const json doc_b = json::array({50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66});
  for (int q = 0; q < 6; ++q) {
    json segs = json::array();
    segs.push_back({{"kind", "system"}, {"ids", sys}});
    segs.push_back({{"kind", "context"}, {"ids", q % 2 ? doc_a : doc_b}});
    segs.push_back({{"kind", "query"}, {"ids", json::array({100 + q, 101 + q})}});
    out << json{{"segments", segs}, {"max_tokens", 6}, {"temperature", 0}, {"ignore_eos", true}}.dump() << "\n";
  }
  out << json{{"prompt_ids", json::array({1, 2, 3, 4, 5})}, {"max_tokens", 4}, {"temperature", 0}}.dump() << "\n";
  return p;
}

TEST(Cli, RequestsFileCacheAndCascadeKeepTokens) {
  const fs::path dir = kSource / "tests/fixtures/models/gqa";
  const fs::path reqs = write_requests();
  const std::string base = "generate --model " + dir.string() + " --requests " + reqs.string() + " --json";
  const RunResult on = run(base + " --cascade on");
  const RunResult off = run(base + " --cascade off");
  const RunResult nocache = run(base + " --no-cache");
  ASSERT_EQ(on.status, 0) << stderr_text();
  ASSERT_EQ(off.status, 0);
  ASSERT_EQ(nocache.status, 0);
  const auto a = json_lines(on.out), b = json_lines(off.out), c = json_lines(nocache.out);
  ASSERT_EQ(a.size(), 8u);  // 7 requests in input order, then the stats line
  for (std::size_t i = 0; i < 7; ++i) {
    EXPECT_EQ(a[i]["token_ids"], c[i]["token_ids"]) << i;
    EXPECT_EQ(b[i]["token_ids"], c[i]["token_ids"]) << i;
  }
  const json& st = a.back().at("stats");
  for (const char* key : {"kv_tokens_logical", "kv_tokens_stored", "chunk_hits", "chunk_misses",
                          "peak_pages_used", "cascade_steps", "max_levels_used"}) {
    EXPECT_TRUE(st.contains(key)) << key;
  }
  EXPECT_GT(st["cascade_steps"].get<int>(), 0);
  EXPECT_EQ(st["max_levels_used"].get<int>(), 3);
  EXPECT_GT(st["chunk_hits"].get<int>(), 0);
  EXPECT_LT(st["kv_tokens_stored"].get<int>(), st["kv_tokens_logical"].get<int>());
  const json& st_off = b.back().at("stats");
  EXPECT_EQ(st_off["cascade_steps"].get<int>(), 0);
  const json& st_nc = c.back().at("stats");
  EXPECT_EQ(st_nc["chunk_hits"].get<int>(), 0);
  EXPECT_EQ(st_nc["kv_tokens_stored"], st_nc["kv_tokens_logical"]);
  EXPECT_EQ(st_nc["kv_tokens_logical"], st["kv_tokens_logical"]);
  // Bytes: K and V of every layer per token, fp32 on the CPU (the fixture's config.json).
  std::ifstream cfg_in(dir / "config.json");
  const json cfg = json::parse(cfg_in);
  const std::int64_t token_bytes = cfg["num_hidden_layers"].get<std::int64_t>() *
                                   cfg["num_key_value_heads"].get<std::int64_t>() *
                                   cfg["head_dim"].get<std::int64_t>() * 2 * 4;
  for (const json* s : {&st, &st_nc}) {
    EXPECT_EQ((*s)["kv_bytes_stored"].get<std::int64_t>(), (*s)["kv_tokens_stored"].get<std::int64_t>() * token_bytes);
    EXPECT_EQ((*s)["kv_bytes_logical"].get<std::int64_t>(), (*s)["kv_tokens_logical"].get<std::int64_t>() * token_bytes);
  }
}

TEST(Cli, ChunkSession) {
  const fs::path script = temp_file("chunks.jsonl");
  {
    std::ofstream out(script);
    out << R"({"op":"register","kind":"system","ids":[1,2,3,4,5,6,7],"metadata":{"name":"sys"}})" << "\n";
    out << R"({"op":"list"})" << "\n";
    out << R"({"op":"get","id":"00"})" << "\n";
    out << R"({"op":"stats"})" << "\n";
  }
  const RunResult r = run("chunks --script " + script.string());
  EXPECT_EQ(r.status, 1);  // the bad id fails, the session goes on
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 4u);
  const std::string id = lines[0]["id"].get<std::string>();
  EXPECT_EQ(id.size(), 64u);
  EXPECT_EQ(lines[1]["chunks"][0]["id"], id);
  EXPECT_EQ(lines[1]["chunks"][0]["metadata"]["name"], "sys");
  EXPECT_EQ(lines[2]["error"]["code"], "invalid_argument");
  EXPECT_EQ(lines[3]["num_chunks"], 1);
}

TEST(Cli, ErrorsExitNonZeroWithAMessage) {
  RunResult r = run("generate --model /nonexistent/model --prompt-ids 1,2");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(stderr_text().find("/nonexistent/model"), std::string::npos);
  r = run("generate --prompt-ids 1,x,3");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(stderr_text().find("'x'"), std::string::npos);
  r = run("generate --model " + (kSource / "tests/fixtures/models/gqa").string() + " --prompt-ids 1,2,999999");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(stderr_text().find("999999"), std::string::npos);
  r = run("generate --model " + (kSource / "tests/fixtures/models/gqa").string() + " --prompt text");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(stderr_text().find("tokenizer"), std::string::npos);
}

TEST(Cli, EmbeddedDefaultRunsWithoutAModel) {
  const RunResult r = run("generate --max-tokens 4 --json");
  ASSERT_EQ(r.status, 0) << stderr_text();
  const auto lines = json_lines(r.out);
  ASSERT_GE(lines.size(), 1u);
  for (const auto& l : lines) {
    EXPECT_EQ(l["token_ids"].size(), 4u);
    EXPECT_TRUE(l.contains("text"));  // the embedded model has the byte-level tokenizer
  }
}

}  // namespace
