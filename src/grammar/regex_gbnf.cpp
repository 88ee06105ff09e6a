// Regex (the common subset) -> GBNF: literals and escapes (\d \w \s \D \W \S \n \t \r \f \v \xHH
// \uHHHH and escaped punctuation), classes with ranges and negation, `.` (any but newline),
// groups ( ) (?: ) (?<name> ), alternation, * + ? {m} {m,} {m,n} (lazy `?` ignored: a mask has
// no preference). The whole text must match (^ at the start and $ at the end are allowed and
// change nothing). Backreferences, lookaround and inline flags are refused with gale::Error.
// In json_string mode (a JSON schema's pattern) the output is the JSON text of a matching string:
// characters JSON must escape are written escaped, and classes lose the ones that cannot appear
// raw (the output is then a subset of the matches, all valid).
#include <algorithm>
#include <cstdio>
#include <utility>
#include <vector>

#include "core/error.h"
#include "grammar/grammar.h"
#include "grammar/regex_gbnf.h"
#include "tokenizer/unicode_util.h"

namespace gale {

namespace {

using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;

Ranges normalize(Ranges r) {
  std::sort(r.begin(), r.end());
  Ranges out;
  for (auto [lo, hi] : r) {
    if (!out.empty() && lo <= out.back().second + 1) {
      out.back().second = std::max(out.back().second, hi);
    } else {
      out.emplace_back(lo, hi);
    }
  }
  return out;
}

Ranges invert(const Ranges& r0) {
  Ranges r = normalize(r0), out;
  uint32_t next = 0;
  for (auto [lo, hi] : r) {
    if (lo > next) out.emplace_back(next, lo - 1);
    next = hi + 1;
  }
  if (next <= 0x10FFFF) out.emplace_back(next, 0x10FFFF);
  return out;
}

Ranges subtract(const Ranges& a, const Ranges& b) {
  Ranges inv = invert(b), out;
  for (auto [lo, hi] : normalize(a))
    for (auto [l2, h2] : inv) {
      uint32_t l = std::max(lo, l2), h = std::min(hi, h2);
      if (l <= h) out.emplace_back(l, h);
    }
  return out;
}

std::string cp_escape(uint32_t cp) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "\\U%08X", cp);
  return buf;
}

std::string class_text(const Ranges& r) {
  std::string s = "[";
  for (auto [lo, hi] : normalize(r)) {
    s += cp_escape(lo);
    if (hi != lo) s += "-" + cp_escape(hi);
  }
  return s + "]";
}


class RegexParser {
 public:
  RegexParser(const std::string& re, bool json) : s_(re), json_(json) {}

  std::string parse() {
    if (i_ < s_.size() && s_[i_] == '^') ++i_;
    std::string e = alternation();
    if (i_ < s_.size()) fail("unexpected ')'");
    return e;
  }

 private:
  [[noreturn]] void fail(const std::string& msg) const {
    throw Error("regex: " + msg + " at offset " + std::to_string(i_));
  }

  std::string alternation() {
    if (++depth_ > 200) fail("nesting too deep");
    std::string out = "(" + sequence();
    while (i_ < s_.size() && s_[i_] == '|') {
      ++i_;
      out += " | " + sequence();
    }
    --depth_;
    return out + ")";
  }

  std::string sequence() {
    std::string out;
    while (i_ < s_.size() && s_[i_] != '|' && s_[i_] != ')') {
      if (s_[i_] == '$' && (i_ + 1 == s_.size() || s_[i_ + 1] == ')' || s_[i_ + 1] == '|')) {
        ++i_;  // end anchor: the whole text matches anyway
        continue;
      }
      std::string atom_text = atom();
      // One quantifier, then at most a lazy / possessive mark: a quantifier of a quantifier ("a+++",
      // "a*{2}") is Python's "multiple repeat" error, and nested repetition without a group is
      // what made the matcher's stack sets explode (a fuzz timeout).
      if (i_ < s_.size()) {
        char c = s_[i_];
        bool quantified = true;
        if (c == '*' || c == '+' || c == '?') {
          ++i_;
          atom_text = "(" + atom_text + ")" + c;
        } else if (c == '{' && is_brace_quantifier()) {
          size_t end = s_.find('}', i_);
          std::string body = s_.substr(i_, end - i_ + 1);
          i_ = end + 1;
          atom_text = "(" + atom_text + ")" + body;
        } else {
          quantified = false;
        }
        if (quantified && i_ < s_.size() && (s_[i_] == '?' || s_[i_] == '+')) ++i_;  // lazy / possessive: no preference
        if (quantified && i_ < s_.size() &&
            (s_[i_] == '*' || s_[i_] == '+' || s_[i_] == '?' || (s_[i_] == '{' && is_brace_quantifier())))
          fail("a quantifier after a quantifier (multiple repeat); group it: (a+)*");
      }
      out += " " + atom_text;
    }
    return out.empty() ? "\"\"" : out;
  }

  bool is_brace_quantifier() const {
    size_t j = i_ + 1;
    bool digits = false;
    while (j < s_.size() && s_[j] >= '0' && s_[j] <= '9') ++j, digits = true;
    if (!digits) return false;
    if (j < s_.size() && s_[j] == ',') {
      ++j;
      while (j < s_.size() && s_[j] >= '0' && s_[j] <= '9') ++j;
    }
    return j < s_.size() && s_[j] == '}';
  }

  // JSON-safe code points: no quote, backslash or control characters.
  static Ranges json_unsafe() { return {{0, 0x1F}, {'"', '"'}, {'\\', '\\'}}; }

  std::string ranges_atom(Ranges r) {
    if (json_) r = subtract(r, json_unsafe());
    r = normalize(r);
    if (r.empty()) fail("character class matches nothing here");
    return class_text(r);
  }

  std::string literal(uint32_t cp) {
    std::string raw;
    if (json_ && (cp < 0x20 || cp == '"' || cp == '\\')) {
      static const char* hex = "0123456789abcdef";
      switch (cp) {
        case '"': raw = "\\\""; break;
        case '\\': raw = "\\\\"; break;
        case '\n': raw = "\\n"; break;
        case '\t': raw = "\\t"; break;
        case '\r': raw = "\\r"; break;
        default: raw = std::string("\\u00") + hex[cp >> 4] + hex[cp & 15];
      }
    } else {
      tok::utf8_append(raw, cp);
    }
    std::string out = "\"";
    for (unsigned char c : raw) {
      if (c == '"' || c == '\\') {
        out += '\\';
        out += char(c);
      } else if (c < 0x20) {
        out += cp_escape(c);
      } else {
        out += char(c);
      }
    }
    return out + "\"";
  }

  uint32_t read_cp() {
    unsigned char c = uint8_t(s_[i_]);
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i_ + size_t(n) > s_.size()) fail("invalid UTF-8");
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < n; ++k) {
      unsigned char cc = uint8_t(s_[i_ + size_t(k)]);
      if ((cc & 0xC0) != 0x80) fail("invalid UTF-8");
      cp = (cp << 6) | (cc & 0x3F);
    }
    i_ += size_t(n);
    return cp;
  }

  uint32_t hex(int n) {
    uint32_t v = 0;
    for (int k = 0; k < n; ++k) {
      if (i_ >= s_.size()) fail("unterminated escape");
      char c = s_[i_++];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) fail("bad hex digit");
      v = v * 16 + uint32_t(d);
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) fail("escape is not a Unicode scalar value");
    return v;
  }

  // After a backslash: a class escape (fills r, true) or one code point (cp, false).
  bool escape(Ranges& r, uint32_t& cp) {
    if (i_ >= s_.size()) fail("trailing backslash");
    char e = s_[i_++];
    static const Ranges digit{{'0', '9'}}, word{{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}},
        space{{'\t', '\r'}, {' ', ' '}};
    switch (e) {
      case 'd': r = digit; return true;
      case 'D': r = invert(digit); return true;
      case 'w': r = word; return true;
      case 'W': r = invert(word); return true;
      case 's': r = space; return true;
      case 'S': r = invert(space); return true;
      case 'n': cp = '\n'; return false;
      case 't': cp = '\t'; return false;
      case 'r': cp = '\r'; return false;
      case 'f': cp = '\f'; return false;
      case 'v': cp = '\v'; return false;
      case '0': cp = 0; return false;
      case 'x': cp = hex(2); return false;
      case 'u': cp = hex(4); return false;
      default:
        if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '0' && e <= '9'))
          fail(std::string("unsupported escape '\\") + e + "' (backreferences, \\b and the like have no grammar)");
        --i_;
        cp = read_cp();
        return false;
    }
  }

  std::string atom() {
    char c = s_[i_];
    if (c == '(') {
      ++i_;
      if (i_ < s_.size() && s_[i_] == '?') {
        if (s_.compare(i_, 2, "?:") == 0) {
          i_ += 2;
        } else if (s_.compare(i_, 2, "?<") == 0 && i_ + 2 < s_.size() && s_[i_ + 2] != '=' && s_[i_ + 2] != '!') {
          size_t end = s_.find('>', i_);
          if (end == std::string::npos) fail("unterminated group name");
          i_ = end + 1;
        } else {
          fail("lookaround and inline flags are not supported");
        }
      }
      std::string inner = alternation();
      if (i_ >= s_.size() || s_[i_] != ')') fail("missing ')'");
      ++i_;
      return inner;
    }
    if (c == '[') return char_class();
    if (c == '.') {
      ++i_;
      return ranges_atom(invert({{'\n', '\n'}}));
    }
    if (c == '*' || c == '+' || c == '?') fail("quantifier without a target");
    if (c == '{' && is_brace_quantifier()) fail("quantifier without a target");
    if (c == '^') fail("'^' is only supported at the start");
    if (c == '$') fail("'$' is only supported at the end");
    if (c == '\\') {
      ++i_;
      Ranges r;
      uint32_t cp = 0;
      if (escape(r, cp)) return ranges_atom(r);
      return literal(cp);
    }
    uint32_t cp = read_cp();
    if (json_ && (cp < 0x20 || cp == '"' || cp == '\\')) return literal(cp);
    return literal(cp);
  }

  std::string char_class() {
    ++i_;  // [
    bool neg = i_ < s_.size() && s_[i_] == '^';
    if (neg) ++i_;
    Ranges r;
    bool first = true;
    while (true) {
      if (i_ >= s_.size()) fail("unterminated character class");
      if (s_[i_] == ']' && !first) {
        ++i_;
        break;
      }
      first = false;
      uint32_t lo;
      if (s_[i_] == '\\') {
        ++i_;
        Ranges cls;
        if (escape(cls, lo)) {
          r.insert(r.end(), cls.begin(), cls.end());
          continue;
        }
      } else {
        lo = read_cp();
      }
      uint32_t hi = lo;
      if (i_ + 1 < s_.size() && s_[i_] == '-' && s_[i_ + 1] != ']') {
        ++i_;
        if (s_[i_] == '\\') {
          ++i_;
          Ranges cls;
          if (escape(cls, hi)) fail("a class escape cannot end a range");
        } else {
          hi = read_cp();
        }
        if (hi < lo) fail("character range out of order");
      }
      r.emplace_back(lo, hi);
    }
    return ranges_atom(neg ? invert(r) : r);
  }

  const std::string& s_;
  bool json_;
  size_t i_ = 0;
  int depth_ = 0;
};

}  // namespace

std::string regex_to_gbnf_expr(const std::string& re, bool json_string) {
  return RegexParser(re, json_string).parse();
}

std::string regex_to_gbnf(const std::string& re) { return "root ::= " + regex_to_gbnf_expr(re, false) + "\n"; }

}  // namespace gale
