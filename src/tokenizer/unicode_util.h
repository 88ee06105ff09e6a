// UTF-8 and Unicode character classes with the exact semantics the HF `tokenizers` crate gets
// from Rust's `char` methods (is_whitespace, is_alphanumeric, is_numeric, to_lowercase) and
// `String::from_utf8_lossy`.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace gale::tok {

// Length of the UTF-8 sequence that starts with `lead` (1 for invalid leads).
inline size_t utf8_seq_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;
}

// Decodes the code point at s[i] (s must be valid UTF-8) and advances i.
inline uint32_t utf8_next(std::string_view s, size_t& i) {
  auto c = static_cast<unsigned char>(s[i]);
  size_t n = utf8_seq_len(c);
  uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return cp;
}

// Code point that ends at s[end) (s valid UTF-8); sets start to its first byte.
uint32_t utf8_prev(std::string_view s, size_t end, size_t& start);

void utf8_append(std::string& out, uint32_t cp);

// Length in bytes of the longest valid UTF-8 prefix of s.
size_t utf8_valid_prefix(std::string_view s);

// Replaces each maximal invalid subsequence by U+FFFD, as Rust's String::from_utf8_lossy does.
void utf8_lossy_append(std::string& out, std::string_view bytes);
inline std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  utf8_lossy_append(out, bytes);
  return out;
}

bool is_whitespace(uint32_t cp);     // Unicode White_Space (Rust char::is_whitespace)
bool is_numeric(uint32_t cp);        // Nd | Nl | No (Rust char::is_numeric)
bool is_alphanumeric(uint32_t cp);   // letters, marks of letters, numbers (Rust char::is_alphanumeric)
bool is_punctuation(uint32_t cp);    // ASCII punctuation or any P* category (tokenizers' is_punc)
bool is_mark_nonspacing(uint32_t cp);  // Mn (for StripAccents)

// Rust char::to_lowercase, appended as UTF-8 (full mapping: U+0130 becomes two code points).
void append_lowercase(std::string& out, uint32_t cp);

enum class NormForm { NFC, NFD, NFKC, NFKD };
std::string unicode_normalize(std::string_view s, NormForm form);

}  // namespace gale::tok
