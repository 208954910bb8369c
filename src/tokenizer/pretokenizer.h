// Normalizer and pre-tokenizer stages of a HF byte-level BPE pipeline: NFC, regex Split and
// ByteLevel splitting. Patterns are written for Oniguruma (what HF tokenizers uses); we translate
// them to PCRE2 so that both engines accept the same strings.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace cascade::tok {

// Unicode normalization applied to text between added tokens.
enum class NormalizerKind { kNone, kNfc };

// True when text is certainly already in NFC (a conservative per-code-point check), so that the
// common case skips utf8proc. text must be valid UTF-8.
bool is_nfc_quick(std::string_view text);

// NFC of valid UTF-8 text.
std::string to_nfc(std::string_view text);

// Rewrites an Oniguruma pattern (as found in tokenizer.json) into PCRE2 syntax with the same
// meaning: \s and \S become Unicode White_Space classes (PCRE2's \s differs, e.g. on U+180E) and
// letters inside (?i:...) become explicit [xX] classes (Oniguruma here does not fold 'ſ' to 's').
// \p{L} and \p{N} gain the letters and digits of Unicode 15-16 that PCRE2 10.42 lacks.
// Throws cascade::Error(kUnsupported) on constructs it cannot translate.
std::string onig_to_pcre2(std::string_view pattern);

// A compiled PCRE2 regex (UTF + UCP, JIT when available). Thread-safe for concurrent matching.
class Regex {
 public:
  // Compiles a PCRE2 pattern; throws cascade::Error(kUnsupported) naming the pattern on failure.
  explicit Regex(const std::string& pcre2_pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Finds the first match in text at or after byte offset `from`; returns false when none.
  // text must be valid UTF-8 and `from` on a character boundary.
  bool find(std::string_view text, std::size_t from, std::size_t& begin, std::size_t& end) const;

 private:
  void* code_ = nullptr;  // pcre2_code*
  bool jit_ = false;
  std::string pattern_;
};

// What a Split pre-tokenizer does with the matches.
enum class SplitBehavior { kIsolated, kRemoved };

// One stage of a pre-tokenizer sequence.
struct PreTokenizerStep {
  std::shared_ptr<const Regex> regex;  // null: no splitting in this step
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;  // ByteLevel: prepend ' ' to pieces not starting with one
};

// The GPT-2 pattern the ByteLevel pre-tokenizer uses when use_regex is true.
std::string_view gpt2_byte_level_pattern();

// A sequence of splitting steps; each step splits every piece the previous step produced.
class PreTokenizer {
 public:
  PreTokenizer() = default;
  explicit PreTokenizer(std::vector<PreTokenizerStep> steps) : steps_(std::move(steps)) {}

  // Calls emit(piece) for each non-empty piece of text, in order. Pieces may point into text or
  // into temporaries that live only during the call.
  void for_each_piece(std::string_view text,
                      const std::function<void(std::string_view)>& emit) const;

 private:
  void run(std::size_t step, std::string_view text,
           const std::function<void(std::string_view)>& emit) const;
  void split(std::size_t step, std::string_view text,
             const std::function<void(std::string_view)>& emit) const;

  std::vector<PreTokenizerStep> steps_;
};

}  // namespace cascade::tok
