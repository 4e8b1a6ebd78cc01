// UTF-8 helpers for text from outside: validation with the offset of the first bad byte,
// code point iteration, and the lossy conversion that decoders apply to byte sequences.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dms::utf8 {

constexpr size_t npos = std::string_view::npos;

// Offset of the first byte that does not start a well-formed UTF-8 sequence (overlong
// forms, surrogates and code points past U+10FFFF included), or npos when `s` is valid.
size_t first_invalid(std::string_view s);

// Length in bytes of the well-formed sequence at s[i] (1..4); `s` must be valid.
inline size_t char_len(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

// Code point of the well-formed sequence at s[i].
char32_t decode_at(std::string_view s, size_t i);

// Appends the UTF-8 encoding of `cp` to `out`.
void append(std::string& out, char32_t cp);

// Bytes as text, each maximal ill-formed subsequence replaced by U+FFFD (the rule of
// Unicode's "substitution of maximal subparts", which Rust's from_utf8_lossy follows).
std::string lossy(std::string_view bytes);

inline bool is_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

}  // namespace dms::utf8
