// StreamDecoder: streamed text equals decode() of all ids, and no push emits half a character.
#include "tokenizer/stream_decoder.h"

#include <gtest/gtest.h>

#include <random>

#include "tokenizer/utf8.h"
#include "tokenizer_test_util.h"

namespace cascade {
namespace {

bool is_valid_utf8(const std::string& s) {
  return tok::find_invalid_utf8(s) == std::string_view::npos;
}

std::string stream_all(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special) {
  StreamDecoder dec(tok, skip_special);
  std::string text;
  for (int32_t id : ids) {
    const std::string piece = dec.push(id);
    EXPECT_TRUE(is_valid_utf8(piece)) << "push emitted broken UTF-8";
    text += piece;
  }
  text += dec.flush();
  return text;
}

TEST(StreamDecoder, ByteLevelDefaultSplitsEmojiByteByByte) {
  const auto tok = Tokenizer::byte_level_default();
  // Family emoji with ZWJs and a skin tone: every byte is its own token.
  const std::string text = "hi 👨‍👩‍👧‍👦 👍🏽 é 中";
  const auto ids = tok->encode(text);
  ASSERT_EQ(ids.size(), text.size());
  StreamDecoder dec(*tok);
  std::string out;
  std::size_t emitted_pushes = 0;
  for (int32_t id : ids) {
    const std::string piece = dec.push(id);
    ASSERT_TRUE(is_valid_utf8(piece));
    ASSERT_LE(dec.pending_bytes(), 3u);
    if (!piece.empty()) ++emitted_pushes;
    out += piece;
  }
  EXPECT_EQ(dec.pending_bytes(), 0u);
  EXPECT_EQ(dec.flush(), "");
  EXPECT_EQ(out, text);
  // 👨 is 4 bytes: its first three pushes emit nothing.
  StreamDecoder dec2(*tok);
  const std::string man = "👨";
  EXPECT_EQ(dec2.push(static_cast<unsigned char>(man[0])), "");
  EXPECT_EQ(dec2.push(static_cast<unsigned char>(man[1])), "");
  EXPECT_EQ(dec2.push(static_cast<unsigned char>(man[2])), "");
  EXPECT_EQ(dec2.push(static_cast<unsigned char>(man[3])), man);
  EXPECT_LT(emitted_pushes, ids.size());
}

TEST(StreamDecoder, InvalidBytesBecomeReplacementCharactersLikeDecode) {
  const auto tok = Tokenizer::byte_level_default();
  // Truncated sequences followed by ASCII, a stray continuation byte, an overlong lead, and a
  // sequence cut off at the very end.
  const std::vector<std::vector<int32_t>> cases = {
      {0xF0, 0x9F, 'a', 'b'}, {0x80, 'x'}, {0xC0, 0xAF}, {'o', 'k', 0xE4, 0xB8}, {0xED, 0xA0, 0x80},
      {0xF0, 0x9F, 0x98, 0xF0, 0x9F, 0x98, 0x80}};
  for (const auto& ids : cases) {
    EXPECT_EQ(stream_all(*tok, ids, false), tok->decode(ids));
  }
}

TEST(StreamDecoder, SkipsSpecialTokensWhenAsked) {
  const auto tok = Tokenizer::byte_level_default();
  const std::vector<int32_t> ids = {257, 'h', 'i', 258};
  EXPECT_EQ(stream_all(*tok, ids, true), "hi");
  EXPECT_EQ(stream_all(*tok, ids, false), "<|im_start|>hi<|im_end|>");
}

TEST(StreamDecoder, Qwen3CorpusStreamsToTheFullDecode) {
  CASCADE_REQUIRE_QWEN3_TOKENIZER(tok);
  const auto strings =
      testing::read_json(testing::tokenizer_fixture("corpus.json")).get<std::vector<std::string>>();
  for (const std::string& s : strings) {
    const auto ids = tok->encode(s);
    ASSERT_EQ(stream_all(*tok, ids, false), tok->decode(ids)) << s;
    ASSERT_EQ(stream_all(*tok, ids, true), tok->decode(ids, true)) << s;
  }
}

TEST(StreamDecoder, Qwen3EmojiSpanningTokensIsHeldBack) {
  CASCADE_REQUIRE_QWEN3_TOKENIZER(tok);
  const std::string text = "🧑🏽‍💻👩‍❤️‍💋‍👨";
  const auto ids = tok->encode(text);
  ASSERT_GT(ids.size(), 2u);
  StreamDecoder dec(*tok);
  std::string out;
  bool held_back = false;
  for (int32_t id : ids) {
    out += dec.push(id);
    held_back |= dec.pending_bytes() > 0;
  }
  EXPECT_TRUE(held_back) << "expected some token to end inside a character";
  out += dec.flush();
  EXPECT_EQ(out, text);
}

TEST(StreamDecoder, RandomCutsOfRandomIdsMatchDecode) {
  CASCADE_REQUIRE_QWEN3_TOKENIZER(tok);
  std::mt19937 rng(5);
  for (int k = 0; k < 300; ++k) {
    std::vector<int32_t> ids;
    const int n = 1 + static_cast<int>(rng() % 12);
    for (int j = 0; j < n; ++j) ids.push_back(static_cast<int32_t>(rng() % tok->vocab_size()));
    ASSERT_EQ(stream_all(*tok, ids, false), tok->decode(ids));
  }
}

}  // namespace
}  // namespace cascade
