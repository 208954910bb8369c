#include "tokenizer/pretokenizer.h"

#include <pcre2.h>
#include <utf8proc.h>

#include <cstdlib>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace cascade::tok {

namespace {

// A code point is NFC-safe when it is a starter with no canonical decomposition that never takes
// part in a canonical composition: such characters cannot change under NFC, whatever surrounds
// them. Everything below U+0300 is safe. Hangul jamo compose algorithmically, so they are excluded.
bool nfc_safe(char32_t cp) {
  if (cp < 0x300) return true;
  if (cp >= 0x1100 && cp <= 0x11FF) return false;
  const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(cp));
  if (p->combining_class != 0) return false;
  if (p->comb_index != UINT16_MAX) return false;
  if (p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0) return false;  // canonical
  return true;
}

// Unicode White_Space, the set Oniguruma's \s matches.
constexpr std::string_view kWhiteSpaceRanges =
    "\\x{9}-\\x{D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}";

// Letters and numbers that HF tokenizers' Oniguruma (Unicode 16) has in \p{L} / \p{N} but Debian's
// PCRE2 10.42 (Unicode 14) lacks: scripts added in Unicode 15 and 16 (CJK Ext. H and I, Egyptian
// hieroglyphs Ext. A, Kawi, Garay, ...). Found by the exhaustive per-code-point test in
// tests/tokenizer/pretokenizer_test.cpp; harmless with a PCRE2 that already has them.
constexpr std::string_view kLetterExtra =
    "\\x{1C89}-\\x{1C8A}\\x{A7CB}-\\x{A7CD}\\x{A7DA}-\\x{A7DC}\\x{105C0}-\\x{105F3}"
    "\\x{10D4A}-\\x{10D65}\\x{10D6F}-\\x{10D85}\\x{10EC2}-\\x{10EC4}\\x{1123F}-\\x{11240}"
    "\\x{11380}-\\x{11389}\\x{1138B}\\x{1138E}\\x{11390}-\\x{113B5}\\x{113B7}\\x{113D1}"
    "\\x{113D3}\\x{11BC0}-\\x{11BE0}\\x{11F02}\\x{11F04}-\\x{11F10}\\x{11F12}-\\x{11F33}"
    "\\x{1342F}\\x{13441}-\\x{13446}\\x{13460}-\\x{143FA}\\x{16100}-\\x{1611D}"
    "\\x{16D40}-\\x{16D6C}\\x{18CFF}\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}"
    "\\x{1E030}-\\x{1E06D}\\x{1E4D0}-\\x{1E4EB}\\x{1E5D0}-\\x{1E5ED}\\x{1E5F0}\\x{2B739}"
    "\\x{2EBF0}-\\x{2EE5D}\\x{31350}-\\x{323AF}";
constexpr std::string_view kNumberExtra =
    "\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}\\x{11F50}-\\x{11F59}"
    "\\x{16130}-\\x{16139}\\x{16D70}-\\x{16D79}\\x{1CCF0}-\\x{1CCF9}\\x{1D2C0}-\\x{1D2D3}"
    "\\x{1E4F0}-\\x{1E4F9}\\x{1E5F1}-\\x{1E5FA}";

}  // namespace

bool is_nfc_quick(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    const auto b = static_cast<unsigned char>(text[i]);
    if (b < 0xCC) {  // lead bytes below 0xCC encode code points below U+0300
      ++i;
      continue;
    }
    if (!nfc_safe(next_codepoint(text, i))) return false;
  }
  return true;
}

std::string to_nfc(std::string_view text) {
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          static_cast<utf8proc_ssize_t>(text.size()), &out,
                                          static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) {
    throw_error(ErrorCode::kInvalidArgument, "NFC normalization failed: {}", utf8proc_errmsg(n));
  }
  std::string result(reinterpret_cast<const char*>(out), static_cast<std::size_t>(n));
  std::free(out);
  return result;
}

std::string onig_to_pcre2(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() * 2);
  // Case-insensitivity per open group; index 0 is the top level.
  std::vector<bool> caseless{false};
  bool in_class = false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\') {
      if (i + 1 >= pattern.size()) {
        throw_error(ErrorCode::kUnsupported, "regex '{}' ends with a lone backslash", pattern);
      }
      const char e = pattern[i + 1];
      if (e == 's') {
        if (in_class) {
          out += kWhiteSpaceRanges;
        } else {
          out += '[';
          out += kWhiteSpaceRanges;
          out += ']';
        }
        ++i;
      } else if (e == 'S') {
        if (in_class) {
          throw_error(ErrorCode::kUnsupported, "regex '{}': \\S inside a character class", pattern);
        }
        out += "[^";
        out += kWhiteSpaceRanges;
        out += ']';
        ++i;
      } else if ((e == 'p' || e == 'P' || e == 'x') && i + 2 < pattern.size() &&
                 pattern[i + 2] == '{') {
        const std::size_t close = pattern.find('}', i + 2);
        if (close == std::string_view::npos) {
          throw_error(ErrorCode::kUnsupported, "regex '{}': unterminated \\{}{{", pattern, e);
        }
        const std::string_view escape = pattern.substr(i, close + 1 - i);
        const std::string_view extra =
            escape == "\\p{L}" ? kLetterExtra : escape == "\\p{N}" ? kNumberExtra : "";
        if (!in_class && !extra.empty()) out += '[';
        out.append(escape);
        out.append(extra);
        if (!in_class && !extra.empty()) out += ']';
        i = close;
      } else {
        out += c;
        out += e;
        ++i;
      }
      continue;
    }
    if (in_class) {
      if (c == ']') in_class = false;
      if (caseless.back() && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) {
        out += static_cast<char>(c ^ 0x20);  // both cases inside the class
      }
      out += c;
      continue;
    }
    if (c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];  // literal ]
      continue;
    }
    if (c == '(') {
      if (pattern.substr(i, 4) == "(?i:") {
        caseless.push_back(true);
        out += "(?:";
        i += 3;
      } else if (pattern.substr(i, 4) == "(?i)") {
        caseless.back() = true;
        i += 3;
      } else {
        caseless.push_back(caseless.back());
        out += c;
      }
      continue;
    }
    if (c == ')') {
      if (caseless.size() > 1) caseless.pop_back();
      out += c;
      continue;
    }
    if (caseless.back() && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) {
      out += '[';
      out += c;
      out += static_cast<char>(c ^ 0x20);
      out += ']';
      continue;
    }
    out += c;
  }
  return out;
}

Regex::Regex(const std::string& pcre2_pattern) : pattern_(pcre2_pattern) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre2_pattern.data()),
                                   pcre2_pattern.size(), PCRE2_UTF | PCRE2_UCP, &err, &err_offset,
                                   nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    throw_error(ErrorCode::kUnsupported, "regex '{}' does not compile at offset {}: {}",
                pcre2_pattern, err_offset, reinterpret_cast<const char*>(msg));
  }
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

namespace {

struct MatchData {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  ~MatchData() { pcre2_match_data_free(data); }
};

}  // namespace

bool Regex::find(std::string_view text, std::size_t from, std::size_t& begin,
                 std::size_t& end) const {
  thread_local MatchData md;
  auto* code = static_cast<const pcre2_code*>(code_);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  int rc = jit_ ? pcre2_jit_match(code, subject, text.size(), from, PCRE2_NO_UTF_CHECK, md.data,
                                  nullptr)
                : PCRE2_ERROR_JIT_BADOPTION;
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT || rc == PCRE2_ERROR_JIT_BADOPTION) {
    rc = pcre2_match(code, subject, text.size(), from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md.data,
                     nullptr);
  }
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof(msg));
    throw_error(ErrorCode::kInvalidArgument, "regex '{}' failed on a {}-byte text: {}", pattern_,
                text.size(), reinterpret_cast<const char*>(msg));
  }
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.data);
  begin = ov[0];
  end = ov[1];
  return true;
}

std::string_view gpt2_byte_level_pattern() {
  return R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
}

void PreTokenizer::for_each_piece(std::string_view text,
                                  const std::function<void(std::string_view)>& emit) const {
  if (!text.empty()) run(0, text, emit);
}

void PreTokenizer::run(std::size_t step, std::string_view text,
                       const std::function<void(std::string_view)>& emit) const {
  if (step == steps_.size()) {
    emit(text);
    return;
  }
  if (steps_[step].add_prefix_space && text.front() != ' ') {
    std::string prefixed;
    prefixed.reserve(text.size() + 1);
    prefixed += ' ';
    prefixed += text;
    split(step, prefixed, emit);
  } else {
    split(step, text, emit);
  }
}

void PreTokenizer::split(std::size_t step, std::string_view text,
                         const std::function<void(std::string_view)>& emit) const {
  const PreTokenizerStep& s = steps_[step];
  if (!s.regex) {
    run(step + 1, text, emit);
    return;
  }
  // Matches and the gaps between them become pieces; `invert` swaps which of the two is the
  // delimiter that the Removed behavior drops.
  auto piece = [&](std::string_view p, bool is_match) {
    if (p.empty()) return;
    if (s.behavior == SplitBehavior::kRemoved && is_match != s.invert) return;
    run(step + 1, p, emit);
  };
  std::size_t pos = 0;
  std::size_t search = 0;
  std::size_t b, e;
  while (search <= text.size() && s.regex->find(text, search, b, e)) {
    if (e == b) {  // empty match: not a split point; step over one character
      if (b >= text.size()) break;
      search = b + 1;
      while (search < text.size() && (static_cast<unsigned char>(text[search]) & 0xC0) == 0x80) {
        ++search;
      }
      continue;
    }
    piece(text.substr(pos, b - pos), false);
    piece(text.substr(b, e - b), true);
    pos = search = e;
  }
  piece(text.substr(pos), false);
}

}  // namespace cascade::tok
