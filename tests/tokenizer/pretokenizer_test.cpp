// The regex translation, NFC shortcut and UTF-8 helpers, checked code point by code point against
// HF's regex engine (tests/fixtures/tokenizer/unicode_classes.json) and utf8proc.
#include "tokenizer/pretokenizer.h"

#include <gtest/gtest.h>

#include <vector>

#include "core/error.h"
#include "tokenizer/utf8.h"
#include "tokenizer_test_util.h"

namespace cascade::tok {
namespace {

std::string utf8_of(char32_t cp) {
  std::string s;
  append_utf8(s, cp);
  return s;
}

// Membership of every code point in HF's class, from the fixture's ranges.
std::vector<bool> hf_class(const char* name) {
  const auto fixture = testing::read_json(testing::tokenizer_fixture("unicode_classes.json"));
  std::vector<bool> in(0x110000, false);
  for (const auto& r : fixture[name]) {
    for (uint32_t cp = r[0].get<uint32_t>(); cp <= r[1].get<uint32_t>(); ++cp) in[cp] = true;
  }
  return in;
}

void expect_class_matches_hf(const char* onig_pattern, const char* fixture_name) {
  const Regex re(onig_to_pcre2(std::string("^(?:") + onig_pattern + ")$"));
  const std::vector<bool> expected = hf_class(fixture_name);
  std::vector<std::string> diffs;
  for (char32_t cp = 0; cp < 0x110000; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    const std::string s = utf8_of(cp);
    std::size_t b, e;
    const bool got = re.find(s, 0, b, e);
    if (got != expected[cp] && diffs.size() < 20) {
      diffs.push_back(fmt::format("U+{:04X} ({})", static_cast<uint32_t>(cp),
                                  expected[cp] ? "missing" : "extra"));
    }
  }
  EXPECT_TRUE(diffs.empty()) << onig_pattern << " differs from HF at " << fmt::format("{}", fmt::join(diffs, ", "));
}

TEST(RegexTranslation, LetterClassMatchesHfForEveryCodePoint) {
  expect_class_matches_hf("\\p{L}", "L");
}
TEST(RegexTranslation, NumberClassMatchesHfForEveryCodePoint) {
  expect_class_matches_hf("\\p{N}", "N");
}
TEST(RegexTranslation, WhitespaceClassMatchesHfForEveryCodePoint) {
  expect_class_matches_hf("\\s", "s");
}

TEST(RegexTranslation, CaseInsensitiveGroupsFoldOnlyAscii) {
  const Regex re(onig_to_pcre2("^(?:(?i:'s|'ll))$"));
  std::size_t b, e;
  for (const char* yes : {"'s", "'S", "'ll", "'LL", "'lL"}) EXPECT_TRUE(re.find(yes, 0, b, e)) << yes;
  // HF's engine does not fold U+017F LONG S to 's' here, PCRE2's caseless mode would.
  EXPECT_FALSE(re.find("'\xC5\xBF", 0, b, e));
  EXPECT_EQ(onig_to_pcre2("(?i:ab)[^\\s]"),
            "(?:[aA][bB])[^\\x{9}-\\x{D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}"
            "\\x{2029}\\x{202F}\\x{205F}\\x{3000}]");
}

TEST(RegexTranslation, RejectsWhatItCannotTranslate) {
  EXPECT_THROW(onig_to_pcre2("[\\S]"), Error);
  EXPECT_THROW(onig_to_pcre2("abc\\"), Error);
  EXPECT_THROW(Regex("(unclosed"), Error);
}

TEST(Nfc, QuickCheckNeverSkipsTextThatNfcWouldChange) {
  // A code point the shortcut accepts must survive NFC alone, after a base letter and before a
  // combining mark: then no neighbour can make NFC change it.
  int accepted = 0;
  for (char32_t cp = 0x300; cp < 0x110000; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    const std::string s = utf8_of(cp);
    if (!is_nfc_quick(s)) continue;
    ++accepted;
    const std::string ctx = "a" + s + "\xCC\x81";  // a, cp, U+0301
    ASSERT_EQ(to_nfc(s), s) << fmt::format("U+{:04X}", static_cast<uint32_t>(cp));
    ASSERT_EQ(to_nfc(ctx), ctx) << fmt::format("U+{:04X}", static_cast<uint32_t>(cp));
  }
  EXPECT_GT(accepted, 100000);  // CJK and most scripts take the shortcut
  EXPECT_FALSE(is_nfc_quick("e\xCC\x81"));          // e + U+0301
  EXPECT_FALSE(is_nfc_quick("\xE1\x84\x80\xE1\x85\xA1"));  // Hangul L + V jamo
  EXPECT_TRUE(is_nfc_quick("plain ascii, caf\xC3\xA9, \xE4\xB8\xAD\xE6\x96\x87"));
  EXPECT_EQ(to_nfc("e\xCC\x81"), "\xC3\xA9");
}

TEST(Utf8, LossyRepairReplacesMaximalInvalidSubparts) {
  const auto lossy = [](std::string_view in) {
    std::string out;
    append_utf8_lossy(out, in);
    return out;
  };
  const std::string fffd = "\xEF\xBF\xBD";
  EXPECT_EQ(lossy("ok"), "ok");
  EXPECT_EQ(lossy("\xF0\x9F\x98"), fffd);                     // truncated 4-byte: one U+FFFD
  EXPECT_EQ(lossy("\xF0\x9F\x98x"), fffd + "x");
  EXPECT_EQ(lossy("\xC0\xAF"), fffd + fffd);                  // overlong lead: each byte
  EXPECT_EQ(lossy("\xED\xA0\x80"), fffd + fffd + fffd);       // surrogate
  EXPECT_EQ(lossy("\xE0\x80"), fffd + fffd);                  // E0 needs A0..BF next
  EXPECT_EQ(lossy("\x80\xBF"), fffd + fffd);
  EXPECT_EQ(lossy("\xF4\x90\x80\x80"), fffd + fffd + fffd + fffd);  // above U+10FFFF
  EXPECT_EQ(lossy("\xE4\xB8\xAD"), "\xE4\xB8\xAD");
}

TEST(Utf8, IncompleteTailAndValidation) {
  EXPECT_EQ(incomplete_utf8_tail("ab"), 0u);
  EXPECT_EQ(incomplete_utf8_tail("a\xF0\x9F"), 2u);
  EXPECT_EQ(incomplete_utf8_tail("a\xF0\x9F\x98"), 3u);
  EXPECT_EQ(incomplete_utf8_tail("a\xF0\x9F\x98\x80"), 0u);
  EXPECT_EQ(incomplete_utf8_tail("a\xE0\x80"), 0u);  // can never complete
  EXPECT_EQ(incomplete_utf8_tail("\xC3"), 1u);
  EXPECT_EQ(find_invalid_utf8("abc\xC3\xA9"), std::string_view::npos);
  EXPECT_EQ(find_invalid_utf8("ab\xFF"), 2u);
  EXPECT_EQ(find_invalid_utf8("ab\xC3"), 2u);
  // Byte-to-unicode: printable bytes are themselves, space is U+0120 (Ġ), newline U+010A (Ċ).
  EXPECT_EQ(byte_to_codepoint()['A'], U'A');
  EXPECT_EQ(byte_to_codepoint()[' '], U'\u0120');
  EXPECT_EQ(byte_to_codepoint()['\n'], U'\u010A');
}

}  // namespace
}  // namespace cascade::tok
