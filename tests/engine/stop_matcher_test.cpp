#include "engine/stop_matcher.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"

namespace cascade {
namespace {

struct Outcome {
  std::string text;
  bool stopped = false;
  int matched = -1;
};

// Naive reference over the whole text: the first end offset at which any stop string has appeared;
// among stops ending there the earliest start wins (then the lowest index).
Outcome reference(const std::string& text, const std::vector<std::string>& stops) {
  for (std::size_t end = 1; end <= text.size(); ++end) {
    int best = -1;
    std::size_t best_start = 0;
    for (std::size_t i = 0; i < stops.size(); ++i) {
      const std::string& s = stops[i];
      if (s.size() > end || text.compare(end - s.size(), s.size(), s) != 0) continue;
      const std::size_t start = end - s.size();
      if (best < 0 || start < best_start) {
        best = static_cast<int>(i);
        best_start = start;
      }
    }
    if (best >= 0) return {text.substr(0, best_start), true, best};
  }
  return {text, false, -1};
}

// Longest suffix of `text` that is a proper prefix of some stop (what must be held back).
std::size_t reference_hold(const std::string& text, const std::vector<std::string>& stops) {
  std::size_t hold = 0;
  for (const std::string& s : stops) {
    for (std::size_t len = 1; len < s.size() && len <= text.size(); ++len) {
      if (text.compare(text.size() - len, len, s, 0, len) == 0) hold = std::max(hold, len);
    }
  }
  return hold;
}

bool valid_utf8(const std::string& s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const std::size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3
                                     : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (std::size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

// Characters (some multi-byte) from a small alphabet so that stops overlap and recur often.
const std::vector<std::string> kAlphabet = {"a", "b", "a", "b", "c", "\n", "é", "日", "🙂"};

std::vector<std::string> random_chars(std::mt19937_64& rng, int n) {
  std::vector<std::string> chars;
  for (int i = 0; i < n; ++i) chars.push_back(kAlphabet[rng() % kAlphabet.size()]);
  return chars;
}

std::string join(const std::vector<std::string>& parts, std::size_t from = 0,
                 std::size_t to = std::string::npos) {
  std::string out;
  for (std::size_t i = from; i < std::min(to, parts.size()); ++i) out += parts[i];
  return out;
}

// Runs `pieces` through a matcher, checking after every feed that the emitted text plus the held
// text is exactly what was fed, and that no more is held back than necessary.
Outcome run_stream(const std::vector<std::string>& pieces, const std::vector<std::string>& stops,
                   bool check_utf8_pieces) {
  StopMatcher matcher(stops);
  Outcome out;
  std::string fed;
  for (const std::string& piece : pieces) {
    const StopFeedResult r = matcher.feed(piece);
    if (check_utf8_pieces) EXPECT_TRUE(valid_utf8(r.emit)) << "emitted a split character";
    if (out.stopped) {
      EXPECT_TRUE(r.stopped);
      EXPECT_TRUE(r.emit.empty()) << "text emitted after the stop";
      continue;
    }
    fed += piece;
    out.text += r.emit;
    if (r.stopped) {
      out.stopped = true;
      out.matched = matcher.matched_index();
      continue;
    }
    EXPECT_EQ(out.text.size() + matcher.held_bytes(), fed.size());
    EXPECT_EQ(matcher.held_bytes(), reference_hold(fed, stops)) << "fed so far: " << fed;
  }
  const std::string rest = matcher.flush();
  if (out.stopped) EXPECT_TRUE(rest.empty());
  out.text += rest;
  return out;
}

TEST(StopMatcher, MatchesNaiveReferenceOverRandomSplits) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 4000; ++trial) {
    const std::vector<std::string> chars = random_chars(rng, 1 + static_cast<int>(rng() % 40));
    const std::string text = join(chars);
    // Stops: substrings of the text (so they often hit, sometimes several and overlapping) plus
    // random strings that may or may not occur.
    std::vector<std::string> stops;
    const int num_stops = static_cast<int>(rng() % 4);
    for (int s = 0; s < num_stops; ++s) {
      const std::size_t len = 1 + rng() % 5;
      if (rng() % 3 != 0) {
        const std::size_t from = rng() % chars.size();
        std::string stop = join(chars, from, from + len);
        if (rng() % 4 == 0) stop += kAlphabet[rng() % kAlphabet.size()];  // near-miss
        stops.push_back(stop);
      } else {
        stops.push_back(join(random_chars(rng, static_cast<int>(len))));
      }
    }
    const Outcome expected = reference(text, stops);

    // Split at arbitrary byte offsets (including empty pieces and mid-character cuts).
    std::vector<std::string> byte_pieces;
    for (std::size_t at = 0; at < text.size();) {
      const std::size_t len = std::min<std::size_t>(rng() % 6, text.size() - at);
      byte_pieces.push_back(text.substr(at, len));
      at += len;
    }
    const Outcome by_bytes = run_stream(byte_pieces, stops, false);
    EXPECT_EQ(by_bytes.text, expected.text) << "trial " << trial;
    EXPECT_EQ(by_bytes.stopped, expected.stopped) << "trial " << trial;
    EXPECT_EQ(by_bytes.matched, expected.matched) << "trial " << trial;

    // Split at character boundaries: every emitted piece is whole UTF-8 characters.
    std::vector<std::string> char_pieces;
    for (std::size_t at = 0; at < chars.size();) {
      const std::size_t len = 1 + rng() % 4;
      char_pieces.push_back(join(chars, at, at + len));
      at += len;
    }
    const Outcome by_chars = run_stream(char_pieces, stops, true);
    EXPECT_EQ(by_chars.text, expected.text) << "trial " << trial;
    EXPECT_EQ(by_chars.stopped, expected.stopped) << "trial " << trial;
    if (HasFailure()) break;
  }
}

TEST(StopMatcher, OverlappingStopsPickTheFirstToComplete) {
  // "bc" completes (at offset 3) before "abcd" could (at 4): the stream stops at "bc".
  EXPECT_EQ(run_stream({"a", "b", "c", "d"}, {"abcd", "bc"}, true).text, "a");
  EXPECT_EQ(run_stream({"abcd"}, {"abcd", "bc"}, true).text, "a");
  // Same end offset: the longer stop (earlier start) wins and is reported.
  const Outcome same_end = run_stream({"xab", "c"}, {"bc", "abc"}, true);
  EXPECT_EQ(same_end.text, "x");
  EXPECT_EQ(same_end.matched, 1);
  // Self-overlapping stop "aab" inside "aaab".
  EXPECT_EQ(run_stream({"a", "a", "a", "b", "z"}, {"aab"}, true).text, "a");
}

TEST(StopMatcher, StopAtVeryStartAndSpanningManyPieces) {
  const Outcome at_start = run_stream({"STOP", "more"}, {"STOP"}, true);
  EXPECT_TRUE(at_start.stopped);
  EXPECT_EQ(at_start.text, "");
  const Outcome spanning = run_stream({"hello <", "|", "im", "_", "end", "|> tail"},
                                      {"<|im_end|>"}, true);
  EXPECT_TRUE(spanning.stopped);
  EXPECT_EQ(spanning.text, "hello ");
}

TEST(StopMatcher, HoldsBackOnlyPossibleStopPrefixes) {
  StopMatcher m({"</answer>"});
  StopFeedResult r = m.feed("x </an");
  EXPECT_EQ(r.emit, "x ");
  EXPECT_FALSE(r.stopped);
  r = m.feed("d");  // "</and" can no longer become "</answer>"
  EXPECT_EQ(r.emit, "</and");
  r = m.feed("日本<");
  EXPECT_EQ(r.emit, "日本");
  EXPECT_EQ(m.flush(), "<");
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcher, EmptyStopListPassesThrough) {
  StopMatcher m({});
  EXPECT_EQ(m.feed("abc").emit, "abc");
  EXPECT_EQ(m.feed("é").emit, "é");
  EXPECT_EQ(m.held_bytes(), 0u);
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, RejectsEmptyStopString) {
  try {
    StopMatcher m({"a", ""});
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("stop[1]"), std::string::npos);
  }
}

}  // namespace
}  // namespace cascade
