// Byte-level BPE tokenizer loaded from a Hugging Face tokenizer.json (Qwen2/Qwen3 family), agreeing
// with HF tokenizers id for id: added tokens are matched first, then the normalizer, the Split /
// ByteLevel pre-tokenizers and BPE by merge rank. Immutable after loading; all const methods are
// safe to call from several threads at once.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace cascade {

namespace tok {
class BpeModel;
class PreTokenizer;
enum class NormalizerKind;
}  // namespace tok

// An entry of tokenizer.json's "added_tokens": matched in raw text before any other stage.
struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;      // skipped by decode(skip_special_tokens); not parsed when parse_special=false
  bool lstrip = false;       // the match swallows whitespace on its left
  bool rstrip = false;       // the match swallows whitespace on its right
  bool single_word = false;  // only matched when not inside a word
  bool normalized = false;   // matched in normalized text instead of raw text
};

class Tokenizer {
 public:
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Loads tokenizer.json; throws cascade::Error naming the file when it is missing (kNotFound),
  // malformed (kParse) or uses a model / normalizer / pre-tokenizer / decoder we lack (kUnsupported).
  static std::unique_ptr<Tokenizer> from_file(const std::filesystem::path& tokenizer_json);

  // Same as from_file for JSON text already in memory; `source_name` is used in error messages.
  static std::unique_ptr<Tokenizer> from_json_string(std::string_view json,
                                                     std::string_view source_name = "tokenizer.json");

  // The embedded tokenizer of the built-in random model: ids 0..255 are the bytes (GPT-2
  // byte-to-unicode names), no merges, then <|endoftext|>=256, <|im_start|>=257, <|im_end|>=258.
  // No normalizer, so decode(encode(s)) == s for any valid UTF-8 s.
  static std::unique_ptr<Tokenizer> byte_level_default();

  // Token ids of text (valid UTF-8, else kInvalidArgument). parse_special=false leaves special
  // added tokens as plain text (HF's encode_special_tokens); non-special added tokens still match.
  std::vector<int32_t> encode(std::string_view text, bool parse_special = true) const;

  // Text of ids; ids outside the vocab are skipped (as HF does) and byte sequences that are not
  // valid UTF-8 become U+FFFD. skip_special_tokens drops special added tokens.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // Max id + 1 over the model vocab and the added tokens.
  int vocab_size() const { return static_cast<int>(id_to_token_.size()); }

  // Id of a token by its vocab spelling (byte-level form, e.g. "Ġhello", or an added token).
  std::optional<int32_t> token_to_id(std::string_view token) const;

  // Vocab spelling of id; throws kInvalidArgument when id names no token.
  std::string id_to_token(int32_t id) const;

  // True when id is an added token marked special (e.g. <|im_end|>).
  bool is_special(int32_t id) const;

  // The raw bytes id stands for in decoded text (what decode concatenates before UTF-8 repair);
  // empty for unknown ids. Used by StreamDecoder.
  std::string_view token_bytes(int32_t id) const;

  // The pre-tokenizer stage alone (no added tokens, no normalizer) on text, each piece in
  // byte-level spelling, like HF's pre_tokenizer.pre_tokenize_str. For tests and debugging.
  std::vector<std::string> pre_tokenize(std::string_view text) const;

  // The added tokens, in file order.
  const std::vector<AddedToken>& added_tokens() const { return added_; }

 private:
  Tokenizer();
  void load(std::string_view json, std::string_view source_name);
  void encode_normalized(std::string_view text, std::vector<int32_t>& out) const;

  struct AddedMatcher;

  std::vector<std::string> id_to_token_;  // "" for holes
  std::vector<std::string> id_to_bytes_;
  std::vector<uint8_t> special_;           // per id
  std::unordered_map<std::string, int32_t> token_to_id_;
  std::vector<AddedToken> added_;
  std::unique_ptr<AddedMatcher> raw_matcher_;         // added tokens with normalized=false
  std::unique_ptr<AddedMatcher> normalized_matcher_;  // added tokens with normalized=true
  tok::NormalizerKind normalizer_;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<tok::BpeModel> bpe_;
};

}  // namespace cascade
