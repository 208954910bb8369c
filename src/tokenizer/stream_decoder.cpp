#include "tokenizer/stream_decoder.h"

#include "tokenizer/utf8.h"

namespace cascade {

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
  if (skip_special_ && tokenizer_.is_special(id)) return {};
  pending_ += tokenizer_.token_bytes(id);
  // Splitting just before a lead byte keeps the U+FFFD repair identical to decoding all at once.
  const std::size_t keep = tok::incomplete_utf8_tail(pending_);
  std::string out;
  tok::append_utf8_lossy(out, std::string_view(pending_).substr(0, pending_.size() - keep));
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  tok::append_utf8_lossy(out, pending_);
  pending_.clear();
  return out;
}

}  // namespace cascade
