#include "tokenizer/tokenizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/utf8.h"

namespace cascade {

using nlohmann::json;
using tok::NormalizerKind;

namespace {

// Inverse of the byte-to-unicode mapping; -1 for code points that name no byte.
int codepoint_to_byte(char32_t cp) {
  static const std::array<int16_t, 512> table = [] {
    std::array<int16_t, 512> t;
    t.fill(-1);
    for (int b = 0; b < 256; ++b) t[tok::byte_to_codepoint()[b]] = static_cast<int16_t>(b);
    return t;
  }();
  return cp < table.size() ? table[cp] : -1;
}

// The bytes the ByteLevel decoder turns a token into: every character mapped back to its byte, or,
// when some character names no byte (e.g. an added token containing a space), the token's own UTF-8.
std::string byte_level_decode(std::string_view token) {
  std::string bytes;
  std::size_t i = 0;
  while (i < token.size()) {
    const int b = codepoint_to_byte(tok::next_codepoint(token, i));
    if (b < 0) return std::string(token);
    bytes.push_back(static_cast<char>(b));
  }
  return bytes;
}

bool is_word_char(char32_t cp) {
  if (cp == '_') return true;
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

// Code point ending at byte offset `end` of valid UTF-8 text (end > 0).
char32_t codepoint_before(std::string_view text, std::size_t end, std::size_t& start) {
  start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  std::size_t i = start;
  return tok::next_codepoint(text, i);
}

// Reads a JSON member with a typed error naming the file and the key.
template <typename T>
T get_or(const json& obj, const char* key, T fallback, std::string_view source,
         std::string_view where) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const json::exception& e) {
    throw_error(ErrorCode::kParse, "{}: {}.{} has the wrong type: {}", source, where, key, e.what());
  }
}

}  // namespace

// Leftmost-longest matching of added tokens, with HF's lstrip / rstrip / single_word rules.
struct Tokenizer::AddedMatcher {
  std::vector<AddedToken> tokens;                 // patterns (content possibly normalized)
  std::array<std::vector<int32_t>, 256> by_first;  // indices into tokens, longest first

  explicit AddedMatcher(std::vector<AddedToken> list) : tokens(std::move(list)) {
    for (int32_t i = 0; i < static_cast<int32_t>(tokens.size()); ++i) {
      if (tokens[i].content.empty()) continue;
      by_first[static_cast<unsigned char>(tokens[i].content[0])].push_back(i);
    }
    for (auto& v : by_first) {
      std::stable_sort(v.begin(), v.end(), [&](int32_t a, int32_t b) {
        return tokens[a].content.size() > tokens[b].content.size();
      });
    }
  }

  bool empty() const { return tokens.empty(); }

  // Calls on_text for the text between matches and on_token for each matched token id.
  template <typename OnText, typename OnToken>
  void split(std::string_view text, bool parse_special, OnText&& on_text,
             OnToken&& on_token) const {
    std::size_t emitted = 0;  // text before this offset has been handed out
    std::size_t i = 0;
    while (i < text.size()) {
      const auto& candidates = by_first[static_cast<unsigned char>(text[i])];
      const AddedToken* hit = nullptr;
      for (int32_t c : candidates) {
        if (text.substr(i).starts_with(tokens[c].content)) {
          hit = &tokens[c];
          break;
        }
      }
      if (hit == nullptr) {
        ++i;
        continue;
      }
      std::size_t start = i;
      std::size_t stop = i + hit->content.size();
      i = stop;  // matching resumes after this match even when it is not used
      if (hit->special && !parse_special) continue;
      if (hit->single_word) {
        std::size_t s;
        const bool word_before = start > 0 && is_word_char(codepoint_before(text, start, s));
        std::size_t j = stop;
        const bool word_after = stop < text.size() && is_word_char(tok::next_codepoint(text, j));
        if (word_before || word_after) continue;
      }
      if (hit->lstrip) {
        std::size_t s = start;
        while (s > emitted) {
          std::size_t prev;
          if (!tok::is_white_space(codepoint_before(text, s, prev))) break;
          s = prev;
        }
        start = s;
      }
      if (hit->rstrip) {
        while (stop < text.size()) {
          std::size_t j = stop;
          if (!tok::is_white_space(tok::next_codepoint(text, j))) break;
          stop = j;
        }
        i = stop;
      }
      if (start > emitted) on_text(text.substr(emitted, start - emitted));
      on_token(hit->id);
      emitted = stop;
    }
    if (emitted < text.size()) on_text(text.substr(emitted));
  }
};

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::from_file(const std::filesystem::path& tokenizer_json) {
  std::error_code ec;
  if (std::filesystem::is_directory(tokenizer_json, ec)) {
    throw_error(ErrorCode::kInvalidArgument,
                "{}: is a directory; pass the tokenizer.json file inside it",
                tokenizer_json.string());
  }
  std::ifstream in(tokenizer_json, std::ios::binary);
  if (!in) {
    throw_error(ErrorCode::kNotFound, "{}: cannot open tokenizer file (does it exist?)",
                tokenizer_json.string());
  }
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) throw_error(ErrorCode::kIo, "{}: read failed", tokenizer_json.string());
  return from_json_string(buf.str(), tokenizer_json.string());
}

std::unique_ptr<Tokenizer> Tokenizer::from_json_string(std::string_view json_text,
                                                       std::string_view source_name) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->load(json_text, source_name);
  return t;
}

std::unique_ptr<Tokenizer> Tokenizer::byte_level_default() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[tok::byte_to_unicode_utf8()[b]] = b;
  json added = json::array();
  const char* specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  for (int i = 0; i < 3; ++i) {
    added.push_back({{"id", 256 + i}, {"content", specials[i]}, {"single_word", false},
                     {"lstrip", false}, {"rstrip", false}, {"normalized", false},
                     {"special", true}});
  }
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false},
                           {"trim_offsets", false}, {"use_regex", false}};
  const json doc = {{"version", "1.0"},
                    {"added_tokens", added},
                    {"normalizer", nullptr},
                    {"pre_tokenizer", byte_level},
                    {"post_processor", byte_level},
                    {"decoder", byte_level},
                    {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}}};
  return from_json_string(doc.dump(), "<embedded byte-level tokenizer>");
}

namespace {

NormalizerKind parse_normalizer(const json& n, std::string_view source) {
  if (n.is_null()) return NormalizerKind::kNone;
  const std::string type = get_or<std::string>(n, "type", "", source, "normalizer");
  if (type == "NFC") return NormalizerKind::kNfc;
  if (type == "Sequence") {
    NormalizerKind kind = NormalizerKind::kNone;
    for (const json& child : n.value("normalizers", json::array())) {
      if (parse_normalizer(child, source) == NormalizerKind::kNfc) kind = NormalizerKind::kNfc;
    }
    return kind;
  }
  throw_error(ErrorCode::kUnsupported,
              "{}: normalizer type '{}' is not supported (supported: NFC, Sequence of NFC)", source,
              type);
}

void parse_pre_tokenizer(const json& p, std::string_view source,
                         std::vector<tok::PreTokenizerStep>& steps) {
  if (p.is_null()) return;
  const std::string type = get_or<std::string>(p, "type", "", source, "pre_tokenizer");
  if (type == "Sequence") {
    for (const json& child : p.value("pretokenizers", json::array())) {
      parse_pre_tokenizer(child, source, steps);
    }
  } else if (type == "Split") {
    tok::PreTokenizerStep step;
    const json& pattern = p.value("pattern", json::object());
    std::string pcre;
    if (pattern.contains("Regex")) {
      pcre = tok::onig_to_pcre2(pattern["Regex"].get<std::string>());
    } else if (pattern.contains("String")) {
      pcre = "\\Q" + pattern["String"].get<std::string>() + "\\E";
    } else {
      throw_error(ErrorCode::kParse, "{}: Split pre-tokenizer has no Regex or String pattern",
                  source);
    }
    const std::string behavior = get_or<std::string>(p, "behavior", "Isolated", source, "Split");
    if (behavior == "Isolated") {
      step.behavior = tok::SplitBehavior::kIsolated;
    } else if (behavior == "Removed") {
      step.behavior = tok::SplitBehavior::kRemoved;
    } else {
      throw_error(ErrorCode::kUnsupported,
                  "{}: Split behavior '{}' is not supported (supported: Isolated, Removed)", source,
                  behavior);
    }
    step.invert = get_or<bool>(p, "invert", false, source, "Split");
    try {
      step.regex = std::make_shared<tok::Regex>(pcre);
    } catch (const Error& e) {
      throw_error(ErrorCode::kUnsupported, "{}: Split pre-tokenizer: {}", source, e.what());
    }
    steps.push_back(std::move(step));
  } else if (type == "ByteLevel") {
    tok::PreTokenizerStep step;
    step.add_prefix_space = get_or<bool>(p, "add_prefix_space", true, source, "ByteLevel");
    if (get_or<bool>(p, "use_regex", true, source, "ByteLevel")) {
      step.regex = std::make_shared<tok::Regex>(tok::onig_to_pcre2(tok::gpt2_byte_level_pattern()));
    }
    steps.push_back(std::move(step));
  } else {
    throw_error(ErrorCode::kUnsupported,
                "{}: pre_tokenizer type '{}' is not supported (supported: Split, ByteLevel, "
                "Sequence)",
                source, type);
  }
}

void check_decoder(const json& d, std::string_view source) {
  const std::string type = d.is_null() ? "null" : get_or<std::string>(d, "type", "", source, "decoder");
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    const json& list = d.value("decoders", json::array());
    if (list.size() == 1) return check_decoder(list[0], source);
  }
  throw_error(ErrorCode::kUnsupported,
              "{}: decoder '{}' is not supported (only a byte-level BPE's ByteLevel decoder)", source,
              type);
}

}  // namespace

void Tokenizer::load(std::string_view json_text, std::string_view source) {
  json doc;
  try {
    doc = json::parse(json_text);
  } catch (const json::parse_error& e) {
    throw_error(ErrorCode::kParse, "{}: not valid JSON: {}", source, e.what());
  }
  if (!doc.is_object()) throw_error(ErrorCode::kParse, "{}: top level is not a JSON object", source);

  // ---- model ----
  if (!doc.contains("model") || !doc["model"].is_object()) {
    throw_error(ErrorCode::kParse, "{}: no \"model\" object", source);
  }
  const json& model = doc["model"];
  const std::string model_type = get_or<std::string>(model, "type", "BPE", source, "model");
  if (model_type != "BPE") {
    throw_error(ErrorCode::kUnsupported, "{}: model type '{}' is not supported (only BPE)", source,
                model_type);
  }
  if (get_or<bool>(model, "byte_fallback", false, source, "model") ||
      !get_or<std::string>(model, "continuing_subword_prefix", "", source, "model").empty() ||
      !get_or<std::string>(model, "end_of_word_suffix", "", source, "model").empty() ||
      get_or<double>(model, "dropout", 0.0, source, "model") != 0.0) {
    throw_error(ErrorCode::kUnsupported,
                "{}: BPE options byte_fallback / continuing_subword_prefix / end_of_word_suffix / "
                "dropout are not supported",
                source);
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    throw_error(ErrorCode::kParse, "{}: model.vocab is missing or not an object", source);
  }
  int32_t max_id = -1;
  std::vector<std::pair<std::string, int32_t>> vocab;
  vocab.reserve(model["vocab"].size());
  for (const auto& [token, id_json] : model["vocab"].items()) {
    if (!id_json.is_number_integer() || id_json.get<int64_t>() < 0 ||
        id_json.get<int64_t>() > (1 << 30)) {
      throw_error(ErrorCode::kParse, "{}: model.vocab['{}'] is not a valid id", source, token);
    }
    const auto id = id_json.get<int32_t>();
    vocab.emplace_back(token, id);
    max_id = std::max(max_id, id);
  }
  // ---- added tokens ----
  for (const json& a : doc.value("added_tokens", json::array())) {
    AddedToken t;
    if (!a.contains("id") || !a.contains("content")) {
      throw_error(ErrorCode::kParse, "{}: an added_tokens entry lacks id or content", source);
    }
    t.content = get_or<std::string>(a, "content", "", source, "added_tokens");
    t.id = get_or<int32_t>(a, "id", -1, source, "added_tokens");
    if (t.id < 0 || t.content.empty()) {
      throw_error(ErrorCode::kParse, "{}: added token '{}' has a bad id or empty content", source,
                  t.content);
    }
    t.special = get_or<bool>(a, "special", false, source, "added_tokens");
    t.lstrip = get_or<bool>(a, "lstrip", false, source, "added_tokens");
    t.rstrip = get_or<bool>(a, "rstrip", false, source, "added_tokens");
    t.single_word = get_or<bool>(a, "single_word", false, source, "added_tokens");
    t.normalized = get_or<bool>(a, "normalized", !t.special, source, "added_tokens");
    max_id = std::max(max_id, t.id);
    added_.push_back(std::move(t));
  }

  id_to_token_.assign(static_cast<std::size_t>(max_id + 1), std::string());
  special_.assign(id_to_token_.size(), 0);
  token_to_id_.reserve(vocab.size() + added_.size());
  for (auto& [token, id] : vocab) {
    id_to_token_[id] = token;
    token_to_id_[token] = id;
  }
  for (const AddedToken& t : added_) {
    id_to_token_[t.id] = t.content;
    token_to_id_[t.content] = t.id;
    special_[t.id] = t.special ? 1 : 0;
  }
  id_to_bytes_.resize(id_to_token_.size());
  for (std::size_t id = 0; id < id_to_token_.size(); ++id) {
    id_to_bytes_[id] = byte_level_decode(id_to_token_[id]);
  }

  // ---- merges ----
  std::vector<tok::MergeRule> merges;
  static const json kNoMerges = json::array();
  const auto merges_it = model.find("merges");  // by reference: value() would copy 150k entries
  const json& merges_json =
      merges_it != model.end() && merges_it->is_array() ? *merges_it : kNoMerges;
  merges.reserve(merges_json.size());
  const auto model_id = [&](const std::string& token, std::size_t rank) -> int32_t {
    auto it = token_to_id_.find(token);
    if (it == token_to_id_.end()) {
      throw_error(ErrorCode::kParse, "{}: merge #{} uses '{}', which is not in model.vocab", source,
                  rank, token);
    }
    return it->second;
  };
  for (std::size_t r = 0; r < merges_json.size(); ++r) {
    const json& m = merges_json[r];
    std::string left, right;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const std::size_t space = s.find(' ', 1);
      if (space == std::string::npos) {
        throw_error(ErrorCode::kParse, "{}: merge #{} '{}' is not 'left right'", source, r, s);
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      throw_error(ErrorCode::kParse, "{}: merge #{} is neither \"a b\" nor [a, b]", source, r);
    }
    merges.push_back({model_id(left, r), model_id(right, r), model_id(left + right, r)});
  }
  std::array<int32_t, 256> byte_ids;
  for (int b = 0; b < 256; ++b) {
    auto it = token_to_id_.find(tok::byte_to_unicode_utf8()[b]);
    byte_ids[b] = it == token_to_id_.end() ? -1 : it->second;
  }
  const bool ignore_merges = get_or<bool>(model, "ignore_merges", false, source, "model");
  std::unordered_map<std::string, int32_t> piece_vocab;
  if (ignore_merges) {
    for (auto& [token, id] : vocab) piece_vocab.emplace(id_to_bytes_[id], id);
  }
  bpe_ = std::make_unique<tok::BpeModel>(byte_ids, merges, std::move(piece_vocab), ignore_merges);

  // ---- pipeline ----
  normalizer_ = parse_normalizer(doc.value("normalizer", json()), source);
  std::vector<tok::PreTokenizerStep> steps;
  parse_pre_tokenizer(doc.value("pre_tokenizer", json()), source, steps);
  pre_tokenizer_ = std::make_unique<tok::PreTokenizer>(std::move(steps));
  check_decoder(doc.value("decoder", json()), source);
  const json& post = doc.value("post_processor", json());
  if (!post.is_null()) {
    const std::string type = get_or<std::string>(post, "type", "", source, "post_processor");
    if (type != "ByteLevel") {
      throw_error(ErrorCode::kUnsupported,
                  "{}: post_processor '{}' is not supported (it would add tokens; only ByteLevel "
                  "or null)",
                  source, type);
    }
  }

  std::vector<AddedToken> raw, normalized;
  for (const AddedToken& t : added_) {
    if (t.normalized && normalizer_ == NormalizerKind::kNfc) {
      AddedToken n = t;
      n.content = tok::to_nfc(t.content);
      normalized.push_back(std::move(n));
    } else if (t.normalized) {
      normalized.push_back(t);
    } else {
      raw.push_back(t);
    }
  }
  raw_matcher_ = std::make_unique<AddedMatcher>(std::move(raw));
  normalized_matcher_ = std::make_unique<AddedMatcher>(std::move(normalized));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  if (const std::size_t bad = tok::find_invalid_utf8(text); bad != std::string_view::npos) {
    throw_error(ErrorCode::kInvalidArgument,
                "cannot tokenize text: invalid UTF-8 at byte {} of {}", bad, text.size());
  }
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  const auto on_token = [&](int32_t id) { out.push_back(id); };
  const auto on_text = [&](std::string_view segment) {
    // Normalization happens per segment between added tokens, as in HF.
    std::string nfc;
    std::string_view normalized = segment;
    if (normalizer_ == NormalizerKind::kNfc && !tok::is_nfc_quick(segment)) {
      nfc = tok::to_nfc(segment);
      normalized = nfc;
    }
    if (normalized_matcher_->empty()) {
      encode_normalized(normalized, out);
    } else {
      normalized_matcher_->split(
          normalized, parse_special, [&](std::string_view t) { encode_normalized(t, out); },
          on_token);
    }
  };
  raw_matcher_->split(text, parse_special, on_text, on_token);
  return out;
}

void Tokenizer::encode_normalized(std::string_view text, std::vector<int32_t>& out) const {
  pre_tokenizer_->for_each_piece(text,
                                 [&](std::string_view piece) { bpe_->encode_piece(piece, out); });
}

std::vector<std::string> Tokenizer::pre_tokenize(std::string_view text) const {
  std::vector<std::string> pieces;
  pre_tokenizer_->for_each_piece(text, [&](std::string_view piece) {
    std::string spelled;
    for (unsigned char b : piece) spelled += tok::byte_to_unicode_utf8()[b];
    pieces.push_back(std::move(spelled));
  });
  return pieces;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    if (skip_special_tokens && special_[id]) continue;
    bytes += id_to_bytes_[id];
  }
  std::string text;
  text.reserve(bytes.size());
  tok::append_utf8_lossy(text, bytes);
  return text;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = token_to_id_.find(std::string(token));
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size() || id_to_token_[id].empty()) {
    throw_error(ErrorCode::kInvalidArgument, "token id {} is not in the vocabulary (size {})", id,
                vocab_size());
  }
  return id_to_token_[id];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && special_[id] != 0;
}

std::string_view Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return id_to_bytes_[id];
}

}  // namespace cascade
