// GBNF text -> grammar IR (llama.cpp's syntax): `name ::= alternatives`, "literals" with
// escapes, [classes] and [^negated] ones over code points, `.`, ( groups ), * + ? {m} {m,} {m,n},
// and # comments. A rule may span lines; it ends where the next `name ::=` begins.
#include <algorithm>
#include <array>
#include <functional>
#include <map>
#include <unordered_map>
#include <utility>

#include "core/error.h"
#include "grammar/grammar.h"
#include "grammar/grammar_ir.h"
#include "tokenizer/unicode_util.h"

namespace gale {

namespace {

// Bounds that keep a hostile grammar from taking the memory: a repetition count and the total
// number of elements.
constexpr int64_t kMaxRepeat = 10000;
constexpr size_t kMaxElems = 1000000;
// Rules entered one inside another before any byte: the matcher expands them recursively.
constexpr int32_t kMaxLeftDepth = 2000;

using Seq = std::vector<GElem>;
using ByteRanges = std::vector<std::pair<uint8_t, uint8_t>>;


int utf8_len(uint32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }

// [lo, hi] (same encoded length) as sequences of byte ranges whose product is exactly the
// encodings of the range: split where a continuation byte would not run over its full span.
void utf8_split(uint32_t lo, uint32_t hi, std::vector<ByteRanges>& out) {
  int n = utf8_len(lo);
  for (int i = 1; i < n; ++i) {
    uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        utf8_split(lo, lo | m, out);
        utf8_split((lo | m) + 1, hi, out);
        return;
      }
      if ((hi & m) != m) {
        utf8_split(lo, (hi & ~m) - 1, out);
        utf8_split(hi & ~m, hi, out);
        return;
      }
    }
  }
  std::string a, b;
  tok::utf8_append(a, lo);
  tok::utf8_append(b, hi);
  ByteRanges r;
  for (size_t k = 0; k < a.size(); ++k) r.emplace_back(uint8_t(a[k]), uint8_t(b[k]));
  out.push_back(std::move(r));
}

void utf8_range(uint32_t lo, uint32_t hi, std::vector<ByteRanges>& out) {
  if (lo > hi) return;
  if (lo <= 0xDFFF && hi >= 0xD800) {  // surrogates have no UTF-8
    if (lo < 0xD800) utf8_range(lo, 0xD7FF, out);
    if (hi > 0xDFFF) utf8_range(0xE000, hi, out);
    return;
  }
  static constexpr uint32_t kMax[] = {0x7F, 0x7FF, 0xFFFF, 0x10FFFF};
  for (uint32_t top : kMax) {
    if (lo > top) continue;
    uint32_t h = std::min(hi, top);
    utf8_split(lo, h, out);
    if (h == hi) return;
    lo = h + 1;
  }
}

struct Builder {
  std::vector<std::string> names;
  std::vector<std::vector<Seq>> rules;
  std::vector<bool> defined;
  std::unordered_map<std::string, int32_t> by_name;
  std::vector<std::bitset<256>> sets;
  std::map<std::array<uint64_t, 4>, uint32_t> set_index;
  size_t num_elems = 0;

  int32_t rule(const std::string& name) {
    auto it = by_name.find(name);
    if (it != by_name.end()) return it->second;
    int32_t id = int32_t(names.size());
    names.push_back(name);
    rules.emplace_back();
    defined.push_back(false);
    by_name.emplace(name, id);
    return id;
  }
  int32_t anon(const std::string& base, std::vector<Seq> alts) {
    std::string name;
    for (int k = int(names.size());; ++k) {
      name = base + "-" + std::to_string(k);
      if (!by_name.count(name)) break;
    }
    int32_t id = rule(name);
    define(id, std::move(alts));
    return id;
  }
  void define(int32_t id, std::vector<Seq> alts) {
    for (const Seq& s : alts) num_elems += s.size() + 1;
    if (num_elems > kMaxElems) throw Error("grammar: too large (over " + std::to_string(kMaxElems) + " elements)");
    rules[size_t(id)] = std::move(alts);
    defined[size_t(id)] = true;
  }
  GElem bytes(const std::bitset<256>& b) {
    std::array<uint64_t, 4> key{};
    for (int i = 0; i < 256; ++i)
      if (b[size_t(i)]) key[size_t(i / 64)] |= uint64_t(1) << (i % 64);
    auto it = set_index.find(key);
    if (it == set_index.end()) {
      it = set_index.emplace(key, uint32_t(sets.size())).first;
      sets.push_back(b);
    }
    return GElem{GElem::Bytes, it->second};
  }
  GElem byte(uint8_t c) {
    std::bitset<256> b;
    b.set(c);
    return bytes(b);
  }
  static GElem ref(int32_t r) { return GElem{GElem::Rule, uint32_t(r)}; }
};

class Parser {
 public:
  Parser(const std::string& text, Builder& b) : s_(text), b_(b) {}

  void parse() {
    skip(true);
    while (i_ < s_.size()) {
      std::string name = parse_name();
      skip(false);
      if (s_.compare(i_, 3, "::=") != 0) fail("expected '::=' after rule name '" + name + "'");
      i_ += 3;
      int32_t id = b_.rule(name);
      if (b_.defined[size_t(id)]) fail("rule '" + name + "' is defined twice");
      cur_ = name;
      std::vector<Seq> alts = parse_alternates(false);
      b_.define(id, std::move(alts));
      skip(true);
    }
  }

 private:
  [[noreturn]] void fail(const std::string& msg) const {
    int line = 1 + int(std::count(s_.begin(), s_.begin() + std::ptrdiff_t(std::min(i_, s_.size())), '\n'));
    throw Error("grammar: line " + std::to_string(line) + ": " + msg);
  }
  static bool name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
  }
  // Spaces, tabs, comments; newlines too when nl.
  void skip(bool nl) {
    while (i_ < s_.size()) {
      char c = s_[i_];
      if (c == ' ' || c == '\t' || c == '\r' || (nl && c == '\n')) {
        ++i_;
      } else if (c == '#') {
        while (i_ < s_.size() && s_[i_] != '\n') ++i_;
      } else {
        break;
      }
    }
  }
  std::string parse_name() {
    size_t st = i_;
    while (i_ < s_.size() && name_char(s_[i_])) ++i_;
    if (i_ == st) fail(i_ < s_.size() ? std::string("unexpected '") + s_[i_] + "'" : "unexpected end");
    return s_.substr(st, i_ - st);
  }
  // At top level a rule ends where `name ::=` starts.
  bool at_rule_start() const {
    size_t j = i_;
    while (j < s_.size() && name_char(s_[j])) ++j;
    if (j == i_) return false;
    while (j < s_.size() && (s_[j] == ' ' || s_[j] == '\t')) ++j;
    return s_.compare(j, 3, "::=") == 0;
  }

  std::vector<Seq> parse_alternates(bool nested) {
    if (++depth_ > 200) fail("nesting too deep");
    std::vector<Seq> alts;
    alts.push_back(parse_sequence(nested));
    while (i_ < s_.size() && s_[i_] == '|') {
      ++i_;
      alts.push_back(parse_sequence(nested));
    }
    --depth_;
    return alts;
  }

  Seq parse_sequence(bool nested) {
    Seq seq;
    while (true) {
      skip(true);
      if (i_ >= s_.size() || s_[i_] == '|' || s_[i_] == ')') break;
      if (!nested && at_rule_start()) break;
      size_t last = seq.size();
      char c = s_[i_];
      if (c == '"') {
        ++i_;
        std::string lit;
        while (true) {
          if (i_ >= s_.size()) fail("unterminated string literal");
          if (s_[i_] == '"') {
            ++i_;
            break;
          }
          tok::utf8_append(lit, parse_char());
        }
        for (char ch : lit) seq.push_back(b_.byte(uint8_t(ch)));
        if (lit.empty()) continue;  // "" matches nothing: no element to repeat
      } else if (c == '[') {
        ++i_;
        bool neg = i_ < s_.size() && s_[i_] == '^';
        if (neg) ++i_;
        std::vector<std::pair<uint32_t, uint32_t>> ranges;
        while (true) {
          if (i_ >= s_.size()) fail("unterminated character class");
          if (s_[i_] == ']') {
            ++i_;
            break;
          }
          uint32_t lo = parse_char(), hi = lo;
          if (i_ + 1 < s_.size() && s_[i_] == '-' && s_[i_ + 1] != ']') {
            ++i_;
            hi = parse_char();
            if (hi < lo) fail("character range out of order");
          }
          ranges.emplace_back(lo, hi);
        }
        seq.push_back(char_class(ranges, neg));
      } else if (c == '.') {
        ++i_;
        seq.push_back(char_class({{0, 0x10FFFF}}, false));
      } else if (c == '(') {
        ++i_;
        std::vector<Seq> alts = parse_alternates(true);
        skip(true);
        if (i_ >= s_.size() || s_[i_] != ')') fail("expected ')'");
        ++i_;
        seq.push_back(Builder::ref(b_.anon(cur_, std::move(alts))));
      } else if (name_char(c)) {
        seq.push_back(Builder::ref(b_.rule(parse_name())));
      } else {
        fail(std::string("unexpected '") + c + "'");
      }
      // Postfix operators apply to the last atom (a multi-byte literal as a whole).
      while (i_ < s_.size() && (s_[i_] == '*' || s_[i_] == '+' || s_[i_] == '?' || s_[i_] == '{')) {
        int64_t lo = 0, hi = -1;
        char op = s_[i_++];
        if (op == '+') lo = 1;
        if (op == '?') hi = 1;
        if (op == '{') parse_braces(lo, hi);
        GElem atom;
        if (seq.size() - last == 1) {
          atom = seq.back();
        } else {
          atom = Builder::ref(b_.anon(cur_, {Seq(seq.begin() + std::ptrdiff_t(last), seq.end())}));
        }
        seq.resize(last);
        repeat(atom, lo, hi, seq);
      }
    }
    return seq;
  }

  void parse_braces(int64_t& lo, int64_t& hi) {
    auto num = [&]() {
      skip(false);
      size_t st = i_;
      int64_t v = 0;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
        v = v * 10 + (s_[i_++] - '0');
        if (v > kMaxRepeat) fail("repetition count over " + std::to_string(kMaxRepeat));
      }
      if (i_ == st) fail("expected a number in {m,n}");
      skip(false);
      return v;
    };
    lo = num();
    if (i_ < s_.size() && s_[i_] == '}') {
      hi = lo;
    } else if (i_ < s_.size() && s_[i_] == ',') {
      ++i_;
      skip(false);
      if (i_ < s_.size() && s_[i_] == '}') {
        hi = -1;
      } else {
        hi = num();
        if (hi < lo) fail("{m,n} with n < m");
      }
    }
    if (i_ >= s_.size() || s_[i_] != '}') fail("expected '}'");
    ++i_;
  }

  // x{lo,hi} (hi -1: unbounded) appended to seq as lo copies and a right-recursive tail.
  void repeat(GElem x, int64_t lo, int64_t hi, Seq& seq) {
    for (int64_t k = 0; k < lo; ++k) seq.push_back(x);
    if (hi < 0) {
      int32_t r = b_.rule(cur_ + "-star-" + std::to_string(b_.names.size()));
      b_.define(r, {Seq{x, Builder::ref(r)}, Seq{}});
      seq.push_back(Builder::ref(r));
    } else if (hi > lo) {
      int32_t prev = -1;
      for (int64_t k = 0; k < hi - lo; ++k) {
        Seq more{x};
        if (prev >= 0) more.push_back(Builder::ref(prev));
        prev = b_.anon(cur_ + "-opt", {more, Seq{}});
      }
      seq.push_back(Builder::ref(prev));
    }
  }

  GElem char_class(std::vector<std::pair<uint32_t, uint32_t>> ranges, bool neg) {
    std::sort(ranges.begin(), ranges.end());
    if (neg) {
      std::vector<std::pair<uint32_t, uint32_t>> inv;
      uint32_t next = 0;
      for (auto [lo, hi] : ranges) {
        if (lo > next) inv.emplace_back(next, lo - 1);
        next = std::max(next, hi + 1);
      }
      if (next <= 0x10FFFF) inv.emplace_back(next, 0x10FFFF);
      ranges = std::move(inv);
    }
    std::bitset<256> ascii;
    std::vector<ByteRanges> seqs;
    for (auto [lo, hi] : ranges) {
      for (uint32_t c = lo; c <= std::min<uint32_t>(hi, 0x7F); ++c) ascii.set(c);
      if (hi >= 0x80) utf8_range(std::max<uint32_t>(lo, 0x80), hi, seqs);
    }
    if (seqs.empty()) {
      if (ascii.none()) fail("character class matches nothing");
      return b_.bytes(ascii);
    }
    // Sequences with the same lead byte range share it: one alternative per (lead, rest).
    std::vector<Seq> alts;
    if (ascii.any()) alts.push_back(Seq{b_.bytes(ascii)});
    for (const ByteRanges& r : seqs) {
      Seq s;
      for (auto [lo, hi] : r) {
        std::bitset<256> b;
        for (int c = lo; c <= hi; ++c) b.set(size_t(c));
        s.push_back(b_.bytes(b));
      }
      alts.push_back(std::move(s));
    }
    return Builder::ref(b_.anon(cur_ + "-char", std::move(alts)));
  }

  uint32_t hex(int n) {
    uint32_t v = 0;
    for (int k = 0; k < n; ++k) {
      if (i_ >= s_.size()) fail("unterminated escape");
      char c = s_[i_++];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) fail("bad hex digit in escape");
      v = v * 16 + uint32_t(d);
    }
    return v;
  }

  // One code point of a literal or class: UTF-8 decoded, or an escape.
  uint32_t parse_char() {
    unsigned char c = uint8_t(s_[i_]);
    if (c == '\\') {
      if (++i_ >= s_.size()) fail("unterminated escape");
      char e = s_[i_++];
      uint32_t v = 0;
      switch (e) {
        case 'n': return '\n';
        case 'r': return '\r';
        case 't': return '\t';
        case '\\': case '"': case '[': case ']': case '-': case '^': case '/': case '\'': return uint32_t(e);
        case 'x': v = hex(2); break;
        case 'u': v = hex(4); break;
        case 'U': v = hex(8); break;
        default: fail(std::string("unknown escape '\\") + e + "'");
      }
      if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) fail("escape is not a Unicode scalar value");
      return v;
    }
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i_ + size_t(n) > s_.size()) fail("invalid UTF-8 in grammar");
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < n; ++k) {
      unsigned char cc = uint8_t(s_[i_ + size_t(k)]);
      if ((cc & 0xC0) != 0x80) fail("invalid UTF-8 in grammar");
      cp = (cp << 6) | (cc & 0x3F);
    }
    i_ += size_t(n);
    return cp;
  }

  const std::string& s_;
  Builder& b_;
  size_t i_ = 0;
  int depth_ = 0;
  std::string cur_;
};

// Rejects left recursion (a rule reaching itself before any byte), which would loop the matcher.
void check_left_recursion(const Builder& b) {
  size_t n = b.rules.size();
  std::vector<bool> nullable(n, false);
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t r = 0; r < n; ++r) {
      if (nullable[r]) continue;
      for (const Seq& s : b.rules[r]) {
        bool all = true;
        for (const GElem& e : s)
          if (e.kind == GElem::Bytes || !nullable[e.arg]) {
            all = false;
            break;
          }
        if (all) {
          nullable[r] = changed = true;
          break;
        }
      }
    }
  }
  std::vector<std::vector<uint32_t>> left(n);
  for (size_t r = 0; r < n; ++r)
    for (const Seq& s : b.rules[r])
      for (const GElem& e : s) {
        if (e.kind == GElem::Bytes) break;
        left[r].push_back(e.arg);
        if (!nullable[e.arg]) break;
      }
  std::vector<uint8_t> color(n, 0);  // 0 new, 1 on the path, 2 done
  std::vector<int32_t> height(n, 0);  // longest left-corner chain below a rule (the matcher's expansion depth)
  for (size_t start = 0; start < n; ++start) {
    if (color[start]) continue;
    std::vector<std::pair<uint32_t, size_t>> st{{uint32_t(start), 0}};
    color[start] = 1;
    while (!st.empty()) {
      auto& [r, k] = st.back();
      if (k < left[r].size()) {
        uint32_t nx = left[r][k++];
        if (color[nx] == 1) throw Error("grammar: rule '" + b.names[nx] + "' is left-recursive");
        if (color[nx] == 0) {
          color[nx] = 1;
          st.emplace_back(nx, 0);
        }
      } else {
        for (uint32_t nx : left[r]) height[r] = std::max(height[r], height[nx] + 1);
        if (height[r] > kMaxLeftDepth)
          throw Error("grammar: rules nest more than " + std::to_string(kMaxLeftDepth) + " deep before a byte");
        color[r] = 2;
        st.pop_back();
      }
    }
  }
}

}  // namespace

std::shared_ptr<const Grammar> parse_gbnf(const std::string& text) {
  Builder b;
  Parser(text, b).parse();
  auto root = b.by_name.find("root");
  if (root == b.by_name.end() || !b.defined[size_t(root->second)]) throw Error("grammar: no 'root' rule");
  for (size_t r = 0; r < b.names.size(); ++r)
    if (!b.defined[r]) throw Error("grammar: rule '" + b.names[r] + "' is used but not defined");
  check_left_recursion(b);
  auto g = std::make_shared<Grammar>();
  g->names = b.names;
  g->sets = std::move(b.sets);
  g->root = root->second;
  g->alts.resize(b.rules.size());
  g->elems.reserve(b.num_elems);
  for (size_t r = 0; r < b.rules.size(); ++r)
    for (const Seq& s : b.rules[r]) {
      g->alts[r].push_back(int32_t(g->elems.size()));
      g->elems.insert(g->elems.end(), s.begin(), s.end());
      g->elems.push_back(GElem{GElem::End, 0});
    }
  return g;
}

}  // namespace gale
