// Fast path for model.vocab / model.merges of tokenizer.json; see json_scan.h for why and for
// the fall-back contract (return false whenever unsure).
#include "tokenizer/json_scan.h"

#include <algorithm>
#include <array>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/json_depth.h"
#include "tokenizer/unicode_util.h"

namespace gale::tok {

namespace {

// ---- byte searches, 16 bytes at a time where SSE2 is there (every x86-64) ----
// The strings of a vocab or merges section are short (~6 bytes) and the gaps between them mostly
// indentation, so one 16-byte step usually covers a whole string or gap.

// Bytes that end a raw run inside a JSON string: the closing quote, a backslash, a control character.
constexpr auto kStringStop = [] {
  std::array<bool, 256> t{};
  for (int c = 0; c < 0x20; ++c) t[size_t(c)] = true;
  t['"'] = t['\\'] = true;
  return t;
}();

// First byte in [p, end) that ends a raw string run (kStringStop), or end; `high` gets the OR of
// the bytes before it (its top bit: whether any is non-ASCII).
inline const char* find_string_stop(const char* p, const char* end, unsigned& high) {
#if defined(__SSE2__)
  const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), ctrl_max = _mm_set1_epi8(0x1F);
  for (; end - p >= 16; p += 16) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    __m128i ctrl = _mm_cmpeq_epi8(_mm_max_epu8(v, ctrl_max), ctrl_max);  // v <= 0x1F
    auto stop = unsigned(_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)), ctrl)));
    auto top = unsigned(_mm_movemask_epi8(v));
    if (stop) {
      unsigned k = unsigned(__builtin_ctz(stop));
      if (top & ((1u << k) - 1)) high |= 0x80;
      return p + k;
    }
    if (top) high |= 0x80;
  }
#endif
  for (; p < end && !kStringStop[static_cast<unsigned char>(*p)]; ++p) high |= static_cast<unsigned char>(*p);
  return p;
}

// First '"' or '\\' in [p, end), or end.
inline const char* find_quote_or_backslash(const char* p, const char* end) {
#if defined(__SSE2__)
  const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
  for (; end - p >= 16; p += 16) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    auto m = unsigned(_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash))));
    if (m) return p + __builtin_ctz(m);
  }
#endif
  while (p < end && *p != '"' && *p != '\\') ++p;
  return p;
}

// First '"', '{', '[', '}' or ']' in [p, end), or end.
inline const char* find_structural(const char* p, const char* end) {
#if defined(__SSE2__)
  const __m128i quote = _mm_set1_epi8('"'), lsq = _mm_set1_epi8('['), rsq = _mm_set1_epi8(']'),
                lcu = _mm_set1_epi8('{'), rcu = _mm_set1_epi8('}');
  for (; end - p >= 16; p += 16) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, lsq)),
                             _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, rsq), _mm_cmpeq_epi8(v, lcu)), _mm_cmpeq_epi8(v, rcu)));
    if (auto bits = unsigned(_mm_movemask_epi8(m))) return p + __builtin_ctz(bits);
  }
#endif
  while (p < end && *p != '"' && *p != '{' && *p != '[' && *p != '}' && *p != ']') ++p;
  return p;
}

struct Cursor {
  const char* p;
  const char* end;
  bool check_utf8 = true;  // off where only the structure matters (nlohmann checks those parts)

  bool at(char c) const { return p < end && *p == c; }
  void ws() {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) ++p;
  }
  bool eat(char c) {
    ws();
    if (!at(c)) return false;
    ++p;
    ws();
    return true;
  }

  bool hex4(uint32_t& v) {
    if (end - p < 4) return false;
    v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = *p++;
      v <<= 4;
      if (c >= '0' && c <= '9') v |= uint32_t(c - '0');
      else if (c >= 'a' && c <= 'f') v |= uint32_t(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= uint32_t(c - 'A' + 10);
      else return false;
    }
    return true;
  }

  // A JSON string at p, strictly: escapes decoded, surrogate pairs joined, raw control characters,
  // lone surrogates and invalid UTF-8 rejected (as nlohmann does). `out` views the input when the
  // string has no escapes, else `scratch`, which holds the decoded text.
  bool string(std::string_view& out, std::string& scratch) {
    if (!at('"')) return false;
    const char* run = ++p;
    bool escaped = false;
    for (;;) {
      unsigned high = 0;  // OR of the run's bytes: any non-ASCII byte sets the top bit
      p = find_string_stop(p, end, high);
      if (p == end) return false;
      // A UTF-8 sequence never spans an escape (escapes are ASCII), so each raw run is checked alone.
      if ((high & 0x80) && check_utf8 && utf8_valid_prefix(std::string_view(run, size_t(p - run))) != size_t(p - run)) return false;
      auto c = static_cast<unsigned char>(*p);
      if (c == '"') {
        if (escaped) {
          scratch.append(run, p);
          out = scratch;
        } else {
          out = std::string_view(run, size_t(p - run));
        }
        ++p;
        return true;
      }
      if (c != '\\') return false;  // a raw control character
      if (!escaped) {
        scratch.clear();
        escaped = true;
      }
      scratch.append(run, p);
      if (++p == end) return false;
      switch (*p++) {
        case '"': scratch += '"'; break;
        case '\\': scratch += '\\'; break;
        case '/': scratch += '/'; break;
        case 'b': scratch += '\b'; break;
        case 'f': scratch += '\f'; break;
        case 'n': scratch += '\n'; break;
        case 'r': scratch += '\r'; break;
        case 't': scratch += '\t'; break;
        case 'u': {
          uint32_t cp;
          if (!hex4(cp)) return false;
          if (cp >= 0xDC00 && cp <= 0xDFFF) return false;
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t lo;
            if (end - p < 2 || p[0] != '\\' || p[1] != 'u') return false;
            p += 2;
            if (!hex4(lo) || lo < 0xDC00 || lo > 0xDFFF) return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          utf8_append(scratch, cp);
          break;
        }
        default: return false;
      }
      run = p;
    }
  }

  // Skips a string without decoding it (only to find its end).
  bool skip_string() {
    if (!at('"')) return false;
    for (++p;; p += 2) {  // past a backslash and the byte it escapes
      p = find_quote_or_backslash(p, end);
      if (p == end) return false;
      if (*p == '"') {
        ++p;
        return true;
      }
      if (end - p < 2) return false;
    }
  }

  // Skips any value, checking only that brackets balance; nlohmann checks the rest later.
  bool skip_value() {
    if (at('"')) return skip_string();
    if (at('{') || at('[')) {
      int depth = 0;
      while ((p = find_structural(p, end)) < end) {
        char c = *p;
        if (c == '"') {
          if (!skip_string()) return false;
          continue;
        }
        ++p;
        if (c == '{' || c == '[') {
          if (++depth > kMaxJsonDepth) return false;  // nlohmann's path names the error
        } else if (c == '}' || c == ']') {
          if (--depth == 0) return true;
        }
      }
      return false;
    }
    const char* start = p;
    while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n' && *p != '\r' && *p != '\t')
      ++p;
    return p != start;
  }

  // A non-negative JSON integer that fits comfortably in int64; anything else (sign, fraction,
  // exponent, leading zero) is left to nlohmann.
  bool uint(int64_t& v) {
    const char* start = p;
    v = 0;
    // Digits past the 16th are skipped, not accumulated: int64 would overflow (undefined), and
    // such a number is refused below anyway.
    while (p < end && *p >= '0' && *p <= '9') {
      if (p - start < 16) v = v * 10 + (*p - '0');
      ++p;
    }
    size_t n = size_t(p - start);
    if (n == 0 || n > 15 || (n > 1 && *start == '0')) return false;
    return !(p < end && (*p == '.' || *p == 'e' || *p == 'E'));
  }
};

}  // namespace

bool split_bpe_sections(std::string_view doc, BpeSections& out) {
  out = BpeSections{};
  Cursor c{doc.data(), doc.data() + doc.size(), false};
  std::string_view key, key2;
  std::string scratch, scratch2;
  bool seen_model = false;
  c.ws();
  if (!c.eat('{')) return false;
  while (!c.at('}')) {
    if (!c.string(key, scratch) || !c.eat(':')) return false;
    if (key == "model" && c.at('{')) {
      if (seen_model) return false;
      seen_model = true;
      if (!c.eat('{')) return false;
      while (!c.at('}')) {
        if (!c.string(key2, scratch2) || !c.eat(':')) return false;
        const char* start = c.p;
        if (!c.skip_value()) return false;
        std::string_view span(start, size_t(c.p - start));
        if (key2 == "vocab" || key2 == "merges") {
          std::string_view& slot = key2 == "vocab" ? out.vocab : out.merges;
          if (!slot.empty()) return false;
          slot = span;
        }
        c.ws();
        if (c.at(',')) {
          if (!c.eat(',')) return false;
        } else if (!c.at('}')) {
          return false;
        }
      }
      ++c.p;
    } else {
      if (key == "model") {
        if (seen_model) return false;
        seen_model = true;
      }
      if (!c.skip_value()) return false;
    }
    c.ws();
    if (c.at(',')) {
      if (!c.eat(',')) return false;
    } else if (!c.at('}')) {
      return false;
    }
  }
  ++c.p;
  c.ws();
  if (c.p != c.end || (out.vocab.empty() && out.merges.empty())) return false;

  std::vector<std::string_view> spans;
  for (auto s : {out.vocab, out.merges})
    if (!s.empty()) spans.push_back(s);
  std::sort(spans.begin(), spans.end(), [](auto a, auto b) { return a.data() < b.data(); });
  const char* pos = doc.data();
  out.rest.reserve(doc.size() - out.vocab.size() - out.merges.size() + 16);
  for (auto s : spans) {
    out.rest.append(pos, s.data());
    out.rest += "null";
    pos = s.data() + s.size();
  }
  out.rest.append(pos, doc.data() + doc.size());
  return true;
}

bool scan_vocab(std::string_view text, const std::function<void(std::string_view token, int64_t id)>& on_entry) {
  Cursor c{text.data(), text.data() + text.size()};
  c.ws();
  if (!c.eat('{')) return false;
  std::string_view key;
  std::string scratch;
  while (!c.at('}')) {
    int64_t id;
    if (!c.string(key, scratch) || !c.eat(':') || !c.uint(id)) return false;
    on_entry(key, id);
    c.ws();
    if (c.at(',')) {
      if (!c.eat(',') || c.at('}')) return false;
    } else if (!c.at('}')) {
      return false;
    }
  }
  ++c.p;
  c.ws();
  return c.p == c.end;
}

bool scan_merges(std::string_view text, const std::function<void(std::string_view a, std::string_view b)>& on_merge) {
  Cursor c{text.data(), text.data() + text.size()};
  c.ws();
  if (!c.eat('[')) return false;
  std::string_view a, b;
  std::string scratch_a, scratch_b;
  while (!c.at(']')) {
    if (c.at('"')) {
      if (!c.string(a, scratch_a)) return false;
      size_t sp = a.find(' ', 1);
      if (sp == std::string_view::npos) return false;
      on_merge(a.substr(0, sp), a.substr(sp + 1));
    } else {
      if (!c.eat('[') || !c.string(a, scratch_a) || !c.eat(',') || !c.string(b, scratch_b) || !c.eat(']'))
        return false;
      on_merge(a, b);
    }
    c.ws();
    if (c.at(',')) {
      if (!c.eat(',') || c.at(']')) return false;
    } else if (!c.at(']')) {
      return false;
    }
  }
  ++c.p;
  c.ws();
  return c.p == c.end;
}

}  // namespace gale::tok
