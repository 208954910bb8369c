// Stop-string matching over streamed text: decides how much of the text generated so far can be
// shown, holding back a tail that might still grow into a stop string.
//
// Semantics: the stream stops at the first point where any stop string has appeared, i.e. at the
// occurrence with the smallest end offset in the concatenated text; among stop strings that end at
// the same offset the longest (earliest-starting) one wins. Everything before that occurrence is
// emitted; the stop string and anything after it are dropped. The outcome does not depend on how
// the text is split into pieces. Matching is byte-wise, which for valid UTF-8 stop strings and text
// only ever matches whole characters, and never holds back a partial character that was fed whole.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace cascade {

struct StopFeedResult {
  std::string emit;      // text that is now safe to show, in stream order
  bool stopped = false;  // a stop string completed; emit ends just before it
};

class StopMatcher {
 public:
  // Throws Error(kInvalidArgument) if a stop string is empty. No stop strings: pass-through.
  explicit StopMatcher(std::vector<std::string> stops);

  // Appends `new_text` to the stream. After a stop, further feeds return {"", true}.
  StopFeedResult feed(std::string_view new_text);
  // Ends the stream: returns the held-back text (empty after a stop) and clears it.
  std::string flush();

  bool stopped() const { return matched_ >= 0; }
  // Index into the constructor's list of the stop string that ended the stream, or -1.
  int matched_index() const { return matched_; }
  // Bytes currently held back because they may begin a stop string.
  std::size_t held_bytes() const { return held_.size(); }

 private:
  std::vector<std::string> stops_;
  std::size_t max_len_ = 0;
  std::string held_;
  int matched_ = -1;
};

}  // namespace cascade
