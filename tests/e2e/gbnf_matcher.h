// A small GBNF (llama.cpp's grammar syntax) reader and matcher for tests: parses a grammar
// (throws std::runtime_error on a syntax error or an undefined rule) and tells whether a whole
// string matches `root`. Sets of positions, no memo: for short test strings and grammars that
// are not left-recursive. Supports rules, alternatives, groups, "literals", [classes] and [^...],
// '.', and the postfix * + ?; escapes \n \r \t \\ \" \] \- \xHH.
#pragma once
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace gale::test {

class Gbnf {
 public:
  explicit Gbnf(const std::string& text) : s_(text) {
    skip_all();
    while (i_ < s_.size()) {
      std::string name = ident();
      if (name.empty()) fail("rule name expected");
      skip_line();
      if (s_.compare(i_, 3, "::=") != 0) fail("'::=' expected after " + name);
      i_ += 3;
      if (rules_.count(name)) fail("rule defined twice: " + name);
      rules_[name] = alternatives(/*nested=*/false);
      skip_all();
    }
    if (!rules_.count("root")) fail("no root rule");
    for (auto& r : refs_)
      if (!rules_.count(r)) throw std::runtime_error("GBNF: undefined rule " + r);
  }
  bool matches(const std::string& input) const {
    auto ends = match(*rules_.at("root"), input, 0, 0);
    return ends.count(input.size()) > 0;
  }

 private:
  struct Node {
    enum Kind { Alt, Seq, Lit, Class, Ref, Star, Plus, Opt } kind;
    std::vector<std::unique_ptr<Node>> kids;
    std::string text;                              // Lit, Ref
    std::vector<std::pair<unsigned, unsigned>> ranges;  // Class
    bool negated = false;
  };
  using P = std::unique_ptr<Node>;

  [[noreturn]] void fail(const std::string& m) const {
    throw std::runtime_error("GBNF: " + m + " at byte " + std::to_string(i_));
  }
  void skip_line() {  // spaces and comments, not newlines
    for (;;) {
      while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t')) ++i_;
      if (i_ < s_.size() && s_[i_] == '#')
        while (i_ < s_.size() && s_[i_] != '\n') ++i_;
      else return;
    }
  }
  void skip_all() {
    for (;;) {
      skip_line();
      if (i_ < s_.size() && (s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
      else return;
    }
  }
  std::string ident() {
    size_t b = i_;
    while (i_ < s_.size() && (isalnum((unsigned char)s_[i_]) || s_[i_] == '-' || s_[i_] == '_')) ++i_;
    return s_.substr(b, i_ - b);
  }
  unsigned esc_char() {  // after a backslash
    if (i_ >= s_.size()) fail("escape at end");
    char c = s_[i_++];
    switch (c) {
      case 'n': return '\n';
      case 'r': return '\r';
      case 't': return '\t';
      case '\\': case '"': case ']': case '[': case '-': case '^': return (unsigned char)c;
      case 'x': {
        if (i_ + 2 > s_.size()) fail("short \\x");
        unsigned v = unsigned(std::stoul(s_.substr(i_, 2), nullptr, 16));
        i_ += 2;
        return v;
      }
      default: fail(std::string("unknown escape \\") + c);
    }
  }
  P alternatives(bool nested) {
    auto alt = std::make_unique<Node>(Node{Node::Alt, {}, {}, {}, false});
    alt->kids.push_back(sequence(nested));
    while (i_ < s_.size() && s_[i_] == '|') {
      ++i_;
      alt->kids.push_back(sequence(nested));
    }
    return alt;
  }
  P sequence(bool nested) {
    auto seq = std::make_unique<Node>(Node{Node::Seq, {}, {}, {}, false});
    for (;;) {
      if (nested) skip_all();
      else skip_line();
      if (i_ >= s_.size()) break;
      char c = s_[i_];
      if (c == '|' || c == ')' || c == '\n' || c == '\r') break;
      P item;
      if (c == '"') {
        ++i_;
        item = std::make_unique<Node>(Node{Node::Lit, {}, {}, {}, false});
        while (i_ < s_.size() && s_[i_] != '"') {
          if (s_[i_] == '\n') fail("newline in literal");
          if (s_[i_] == '\\') { ++i_; item->text += char(esc_char()); }
          else item->text += s_[i_++];
        }
        if (i_ >= s_.size()) fail("unterminated literal");
        ++i_;
      } else if (c == '[') {
        ++i_;
        item = std::make_unique<Node>(Node{Node::Class, {}, {}, {}, false});
        if (i_ < s_.size() && s_[i_] == '^') { item->negated = true; ++i_; }
        while (i_ < s_.size() && s_[i_] != ']') {
          auto one = [&]() -> unsigned {
            if (s_[i_] == '\\') { ++i_; return esc_char(); }
            return (unsigned char)s_[i_++];
          };
          unsigned lo = one(), hi = lo;
          if (i_ + 1 < s_.size() && s_[i_] == '-' && s_[i_ + 1] != ']') { ++i_; hi = one(); }
          item->ranges.push_back({lo, hi});
        }
        if (i_ >= s_.size()) fail("unterminated class");
        ++i_;
      } else if (c == '.') {
        ++i_;
        item = std::make_unique<Node>(Node{Node::Class, {}, {}, {}, true});
      } else if (c == '(') {
        ++i_;
        item = alternatives(true);
        skip_all();
        if (i_ >= s_.size() || s_[i_] != ')') fail("')' expected");
        ++i_;
      } else {
        std::string name = ident();
        if (name.empty()) fail(std::string("unexpected '") + c + "'");
        skip_line();
        if (s_.compare(i_, 3, "::=") == 0) fail("missing newline before rule " + name);
        refs_.insert(name);
        item = std::make_unique<Node>(Node{Node::Ref, {}, name, {}, false});
      }
      while (i_ < s_.size() && (s_[i_] == '*' || s_[i_] == '+' || s_[i_] == '?')) {
        Node::Kind k = s_[i_] == '*' ? Node::Star : s_[i_] == '+' ? Node::Plus : Node::Opt;
        ++i_;
        auto w = std::make_unique<Node>(Node{k, {}, {}, {}, false});
        w->kids.push_back(std::move(item));
        item = std::move(w);
      }
      seq->kids.push_back(std::move(item));
    }
    return seq;
  }

  std::set<size_t> match(const Node& n, const std::string& in, size_t pos, int depth) const {
    if (depth > 2000) throw std::runtime_error("GBNF: recursion too deep");
    std::set<size_t> out;
    switch (n.kind) {
      case Node::Alt:
        for (auto& k : n.kids)
          for (size_t e : match(*k, in, pos, depth + 1)) out.insert(e);
        return out;
      case Node::Seq: {
        std::set<size_t> cur{pos};
        for (auto& k : n.kids) {
          std::set<size_t> next;
          for (size_t p : cur)
            for (size_t e : match(*k, in, p, depth + 1)) next.insert(e);
          cur = std::move(next);
          if (cur.empty()) break;
        }
        return cur;
      }
      case Node::Lit:
        if (in.compare(pos, n.text.size(), n.text) == 0) out.insert(pos + n.text.size());
        return out;
      case Node::Class: {
        if (pos >= in.size()) return out;
        unsigned c = (unsigned char)in[pos];
        bool in_class = false;
        for (auto [lo, hi] : n.ranges) in_class = in_class || (c >= lo && c <= hi);
        if (in_class != n.negated) out.insert(pos + 1);
        return out;
      }
      case Node::Ref: return match(*rules_.at(n.text), in, pos, depth + 1);
      case Node::Opt:
        out = match(*n.kids[0], in, pos, depth + 1);
        out.insert(pos);
        return out;
      case Node::Star:
      case Node::Plus: {
        std::set<size_t> frontier{pos};
        if (n.kind == Node::Star) out.insert(pos);
        while (!frontier.empty()) {
          std::set<size_t> next;
          for (size_t p : frontier)
            for (size_t e : match(*n.kids[0], in, p, depth + 1))
              if (!out.count(e)) { out.insert(e); next.insert(e); }
          frontier = std::move(next);
        }
        return out;
      }
    }
    return out;
  }

  std::string s_;
  size_t i_ = 0;
  std::map<std::string, P> rules_;
  std::set<std::string> refs_;
};

}  // namespace gale::test
