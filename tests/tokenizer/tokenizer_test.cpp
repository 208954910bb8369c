// Checks the BPE tokenizer against HF tokenizers' output for the fixture corpus (written by
// scripts/make_tokenizer_fixtures.py), plus the embedded byte-level tokenizer and load errors.
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "core/error.h"
#include "tokenizer_test_util.h"

namespace cascade {
namespace {

using nlohmann::json;
using testing::read_json;
using testing::tokenizer_fixture;

std::string show_ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += std::to_string(id) + " ";
  return s;
}

struct Corpus {
  std::vector<std::string> strings;
  json expected;
};

const Corpus& corpus() {
  static const Corpus c = [] {
    Corpus c;
    c.strings = read_json(tokenizer_fixture("corpus.json")).get<std::vector<std::string>>();
    c.expected = read_json(tokenizer_fixture("expected_ids.json"));
    return c;
  }();
  return c;
}

TEST(TokenizerQwen3, CorpusHasTheAdvertisedSize) {
  ASSERT_GE(corpus().strings.size(), 300u);
  ASSERT_EQ(corpus().strings.size(), corpus().expected["cases"].size());
}

TEST(TokenizerQwen3, EncodeMatchesHfIdForId) {
  CASCADE_REQUIRE_QWEN3_TOKENIZER(tok);
  int mismatches = 0;
  for (std::size_t i = 0; i < corpus().strings.size(); ++i) {
    const std::string& text = corpus().strings[i];
    const auto expected = corpus().expected["cases"][i]["ids"].get<std::vector<int32_t>>();
    const auto got = tok->encode(text);
    if (got != expected && ++mismatches <= 10) {
      ADD_FAILURE() << "string #" << i << " " << json(text).dump() << "\n expected "
                    << show_ids(expected) << "\n got      " << show_ids(got);
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(TokenizerQwen3, EncodeWithoutParsingSpecialTokensMatchesHf) {
  CASCADE_REQUIRE_QWEN3_TOKENIZER(tok);
  int mismatches = 0;
  for (std::size_t i = 0; i < corpus().strings.size(); ++i) {
    const auto expected =
        corpus().expected["cases"][i]["ids_no_special"].get<std::vector<int32_t>>();
    const auto got = tok->encode(corpus().strings[i], /*parse_special=*/false);
    if (got != expected && ++mismatches <= 10) {
      ADD_FAILURE() << "string #" << i << " " << json(corpus().strings[i]).dump()
                    << "\n expected " << show_ids(expected) << "\n got      " << show_ids(got);
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(TokenizerQwen3, PreTokenizerSplitsLikeHf) {
  CASCADE_REQUIRE_QWEN3_TOKENIZER(tok);
  int mismatches = 0;
  for (std::size_t i = 0; i < corpus().strings.size(); ++i) {
    const auto expected = corpus().expected["cases"][i]["pieces"].get<std::vector<std::string>>();
    const auto got = tok->pre_tokenize(corpus().strings[i]);
    if (got != expected && ++mismatches <= 10) {
      ADD_FAILURE() << "string #" << i << " " << json(corpus().strings[i]).dump()
                    << "\n expected " << json(expected).dump() << "\n got      "
                    << json(got).dump();
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(TokenizerQwen3, SpecialTokensAreSingleIdsOnlyWhenParsed) {
  CASCADE_REQUIRE_QWEN3_TOKENIZER(tok);
  const auto im_start = tok->token_to_id("<|im_start|>");
  ASSERT_TRUE(im_start.has_value());
  EXPECT_TRUE(tok->is_special(*im_start));
  EXPECT_EQ(tok->encode("<|im_start|>"), std::vector<int32_t>{*im_start});
  const auto plain = tok->encode("<|im_start|>", false);
  EXPECT_GT(plain.size(), 1u);
  // <think> is an added token but not special: matched either way, kept by skip_special decode.
  const auto think = tok->token_to_id("<think>");
  ASSERT_TRUE(think.has_value());
  EXPECT_FALSE(tok->is_special(*think));
  EXPECT_EQ(tok->encode("<think>", false), std::vector<int32_t>{*think});
}

TEST(TokenizerQwen3, DecodeMatchesHf) {
  CASCADE_REQUIRE_QWEN3_TOKENIZER(tok);
  for (std::size_t i = 0; i < corpus().strings.size(); ++i) {
    const json& c = corpus().expected["cases"][i];
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->decode(ids), c["decoded"].get<std::string>()) << "string #" << i;
    EXPECT_EQ(tok->decode(ids, true), c["decoded_skip_special"].get<std::string>())
        << "string #" << i;
  }
}

TEST(TokenizerQwen3, DecodeOfCutCharactersAndUnknownIdsMatchesHf) {
  CASCADE_REQUIRE_QWEN3_TOKENIZER(tok);
  for (const json& c : corpus().expected["decode_cases"]) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->decode(ids, c["skip_special"].get<bool>()), c["text"].get<std::string>())
        << "ids " << show_ids(ids);
  }
}

TEST(TokenizerQwen3, VocabularyQueries) {
  CASCADE_REQUIRE_QWEN3_TOKENIZER(tok);
  EXPECT_EQ(tok->vocab_size(), corpus().expected["vocab_size"].get<int>());
  const auto hello = tok->token_to_id("Ġhello");
  ASSERT_TRUE(hello.has_value());
  EXPECT_EQ(tok->id_to_token(*hello), "Ġhello");
  EXPECT_EQ(tok->encode(" hello"), std::vector<int32_t>{*hello});
  EXPECT_FALSE(tok->token_to_id("definitely not a token ###").has_value());
  EXPECT_THROW(tok->id_to_token(tok->vocab_size()), Error);
  EXPECT_THROW(tok->id_to_token(-1), Error);
  EXPECT_FALSE(tok->is_special(*hello));
  EXPECT_FALSE(tok->is_special(-5));
}

TEST(TokenizerQwen3, LongInputsWithoutBreaks) {
  CASCADE_REQUIRE_QWEN3_TOKENIZER(tok);
  // Pieces longer than the cache limit and long whitespace runs (regex backtracking).
  const std::string letters(5000, 'a');
  const std::string spaces = std::string(20000, ' ') + "x";
  for (const std::string& s : {letters, spaces}) {
    const auto ids = tok->encode(s);
    EXPECT_EQ(tok->decode(ids), s);
    EXPECT_LT(ids.size(), s.size() / 2);
  }
}

TEST(TokenizerQwen3, RejectsInvalidUtf8) {
  CASCADE_REQUIRE_QWEN3_TOKENIZER(tok);
  try {
    tok->encode("ok \xC3\x28 bad");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("byte 3"), std::string::npos) << e.what();
  }
}

TEST(TokenizerQwen3, ConcurrentEncodeAgreesWithSerial) {
  CASCADE_REQUIRE_QWEN3_TOKENIZER(tok);
  const auto& strings = corpus().strings;
  std::vector<std::vector<int32_t>> serial;
  for (const auto& s : strings) serial.push_back(tok->encode(s));
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(1234 + t);
      for (int k = 0; k < 400; ++k) {
        const std::size_t i = rng() % strings.size();
        if (tok->encode(strings[i]) != serial[i]) ++failures[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int f : failures) EXPECT_EQ(f, 0);
}

// ---- the embedded byte-level tokenizer ----

TEST(TokenizerByteLevelDefault, LayoutAndSpecialTokens) {
  const auto tok = Tokenizer::byte_level_default();
  EXPECT_EQ(tok->vocab_size(), 259);
  EXPECT_EQ(tok->token_to_id("<|endoftext|>"), 256);
  EXPECT_EQ(tok->token_to_id("<|im_start|>"), 257);
  EXPECT_EQ(tok->token_to_id("<|im_end|>"), 258);
  EXPECT_TRUE(tok->is_special(258));
  EXPECT_FALSE(tok->is_special(65));
  EXPECT_EQ(tok->id_to_token(' '), "Ġ");
  EXPECT_EQ(tok->id_to_token('A'), "A");
  EXPECT_EQ(tok->encode("A b"), (std::vector<int32_t>{'A', ' ', 'b'}));
  EXPECT_EQ(tok->encode("<|im_start|>hi<|im_end|>"), (std::vector<int32_t>{257, 'h', 'i', 258}));
  const std::vector<int32_t> with_special{257, 'h', 'i', 258};
  EXPECT_EQ(tok->decode(with_special), "<|im_start|>hi<|im_end|>");
  EXPECT_EQ(tok->decode(with_special, true), "hi");
}

TEST(TokenizerByteLevelDefault, RoundTripsAnyUtf8) {
  const auto tok = Tokenizer::byte_level_default();
  for (const std::string& s : corpus().strings) {
    const auto ids = tok->encode(s, /*parse_special=*/false);
    ASSERT_EQ(ids.size(), s.size());  // one id per byte, the byte's value
    for (std::size_t i = 0; i < s.size(); ++i) {
      ASSERT_EQ(ids[i], static_cast<unsigned char>(s[i]));
    }
    ASSERT_EQ(tok->decode(ids), s);  // no normalizer: combining sequences survive untouched
  }
  // Random code points of every plane.
  std::mt19937 rng(99);
  for (int k = 0; k < 200; ++k) {
    std::string s;
    for (int j = 0; j < 20; ++j) {
      char32_t cp = rng() % 0x110000;
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
      if (cp < 0x80) {
        s.push_back(static_cast<char>(cp));
      } else if (cp < 0x800) {
        s += {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
      } else if (cp < 0x10000) {
        s += {static_cast<char>(0xE0 | (cp >> 12)), static_cast<char>(0x80 | ((cp >> 6) & 0x3F)),
              static_cast<char>(0x80 | (cp & 0x3F))};
      } else {
        s += {static_cast<char>(0xF0 | (cp >> 18)), static_cast<char>(0x80 | ((cp >> 12) & 0x3F)),
              static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), static_cast<char>(0x80 | (cp & 0x3F))};
      }
    }
    ASSERT_EQ(tok->decode(tok->encode(s)), s);
  }
}

// ---- load errors ----

std::string load_error(std::string_view json_text, ErrorCode expected_code) {
  try {
    Tokenizer::from_json_string(json_text, "bad/tokenizer.json");
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), expected_code) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error for " << json_text;
  return "";
}

const char* kMinimalModel =
    R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";

TEST(TokenizerErrors, MissingFileNamesThePath) {
  try {
    Tokenizer::from_file("/nonexistent/dir/tokenizer.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/tokenizer.json"), std::string::npos);
  }
}

TEST(TokenizerErrors, DirectoryInsteadOfFile) {
  try {
    Tokenizer::from_file(CASCADE_SOURCE_DIR);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("is a directory"), std::string::npos) << e.what();
  }
}

TEST(TokenizerErrors, MalformedJsonNamesTheFile) {
  const std::string msg = load_error(R"({"model": {"type": "BPE", )", ErrorCode::kParse);
  EXPECT_NE(msg.find("bad/tokenizer.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not valid JSON"), std::string::npos) << msg;
}

TEST(TokenizerErrors, UnsupportedModelType) {
  const std::string msg =
      load_error(R"({"model": {"type": "WordPiece", "vocab": {}}, "decoder": {"type": "ByteLevel"}})",
                 ErrorCode::kUnsupported);
  EXPECT_NE(msg.find("bad/tokenizer.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("WordPiece"), std::string::npos) << msg;
}

TEST(TokenizerErrors, UnsupportedPreTokenizer) {
  const std::string msg = load_error(std::string("{") + kMinimalModel +
                                         R"(, "pre_tokenizer": {"type": "Metaspace"},
                                            "decoder": {"type": "ByteLevel"}})",
                                     ErrorCode::kUnsupported);
  EXPECT_NE(msg.find("bad/tokenizer.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Metaspace"), std::string::npos) << msg;
}

TEST(TokenizerErrors, UnsupportedNormalizerAndDecoder) {
  std::string msg = load_error(std::string("{") + kMinimalModel +
                                   R"(, "normalizer": {"type": "Lowercase"},
                                      "decoder": {"type": "ByteLevel"}})",
                               ErrorCode::kUnsupported);
  EXPECT_NE(msg.find("Lowercase"), std::string::npos) << msg;
  msg = load_error(std::string("{") + kMinimalModel + R"(, "decoder": {"type": "WordPiece"}})",
                   ErrorCode::kUnsupported);
  EXPECT_NE(msg.find("WordPiece"), std::string::npos) << msg;
}

TEST(TokenizerErrors, MergeOutsideVocabAndBadRegex) {
  std::string msg = load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]},
                                   "decoder": {"type": "ByteLevel"}})",
                               ErrorCode::kParse);
  EXPECT_NE(msg.find("merge #0"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'b'"), std::string::npos) << msg;
  msg = load_error(std::string("{") + kMinimalModel +
                       R"(, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"},
                          "behavior": "Isolated"}, "decoder": {"type": "ByteLevel"}})",
                   ErrorCode::kUnsupported);
  EXPECT_NE(msg.find("(unclosed"), std::string::npos) << msg;
  EXPECT_NE(msg.find("bad/tokenizer.json"), std::string::npos) << msg;
}

TEST(TokenizerErrors, MissingModel) {
  const std::string msg = load_error(R"({"decoder": {"type": "ByteLevel"}})", ErrorCode::kParse);
  EXPECT_NE(msg.find("no \"model\""), std::string::npos) << msg;
}

}  // namespace
}  // namespace cascade
