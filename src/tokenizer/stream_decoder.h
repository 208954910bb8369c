// Incremental detokenization for streaming generation: turns ids into text as they arrive without
// ever emitting half of a multi-byte UTF-8 character (one emoji often spans several tokens).
#pragma once

#include <cstdint>
#include <string>

#include "tokenizer/tokenizer.h"

namespace cascade {

class StreamDecoder {
 public:
  // `tokenizer` must outlive the decoder. skip_special drops special tokens, as decode() does.
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = false);

  // Adds one id; returns the text it completes (possibly empty). Bytes of a character that more
  // ids may still complete are held back; bytes that can never form a character become U+FFFD.
  std::string push(int32_t id);

  // Returns whatever is held back (an incomplete character becomes U+FFFD) and resets the state.
  std::string flush();

  // Bytes currently held back (0..3).
  std::size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace cascade
