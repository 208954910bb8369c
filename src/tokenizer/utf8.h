// UTF-8 and GPT-2 byte-level helpers shared by the tokenizer, its decoder and the stream decoder.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace cascade::tok {

// Byte b -> the code point GPT-2's byte-level scheme uses to show it (printable bytes map to
// themselves, the rest to U+0100 + n), so that every byte has a visible, non-space character.
const std::array<char32_t, 256>& byte_to_codepoint();

// The UTF-8 encoding of byte_to_codepoint()[b].
const std::array<std::string, 256>& byte_to_unicode_utf8();

// Appends the UTF-8 encoding of code point cp.
void append_utf8(std::string& out, char32_t cp);

// Decodes the code point at s[i] (s must be valid UTF-8) and advances i.
char32_t next_codepoint(std::string_view s, std::size_t& i);

// Offset of the first byte that breaks UTF-8 validity, or npos when s is valid.
std::size_t find_invalid_utf8(std::string_view s);

// Appends bytes as text, replacing each maximal invalid subsequence with U+FFFD (the policy of
// Rust's String::from_utf8_lossy and Python's errors="replace", which HF tokenizers use).
void append_utf8_lossy(std::string& out, std::string_view bytes);

// Length of the trailing bytes of s that begin a UTF-8 sequence which more bytes could still
// complete (0 when s ends on a character boundary or with bytes that can never become valid).
std::size_t incomplete_utf8_tail(std::string_view s);

}  // namespace cascade::tok

namespace cascade::tok {

// Unicode White_Space (what Rust's char::is_whitespace and Oniguruma's \s accept).
bool is_white_space(char32_t cp);

}  // namespace cascade::tok
