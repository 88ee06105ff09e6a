// Jinja2 lexer: template text -> Data and tag tokens, with trim_blocks/lstrip_blocks.
#include "tokenizer/jinja_lexer.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "tokenizer/jinja_value.h"

namespace gale::jinja {

namespace {

[[noreturn]] void lex_fail(int line, const std::string& msg) {
  throw Error("chat template line " + std::to_string(line) + ": " + msg);
}

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string rstrip_ws(std::string_view s) {
  size_t e = s.size();
  while (e > 0 && is_ws(s[e - 1])) --e;
  return std::string(s.substr(0, e));
}

int count_newlines(std::string_view s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

// Python's 'unicode-escape' decoding of a string literal body, as jinja2 applies it.
std::string unescape(std::string_view s, int line) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c != '\\' || i + 1 >= s.size()) {
      out.push_back(c);
      continue;
    }
    char e = s[++i];
    auto hexval = [&](size_t n) -> char32_t {
      char32_t v = 0;
      for (size_t k = 1; k <= n; ++k) {
        if (i + k >= s.size()) lex_fail(line, "truncated escape in string literal");
        char h = s[i + k];
        int d = (h >= '0' && h <= '9') ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
        if (d < 0) lex_fail(line, "invalid escape in string literal");
        v = v * 16 + char32_t(d);
      }
      i += n;
      return v;
    };
    switch (e) {
      case 'n': out.push_back('\n'); break;
      case 't': out.push_back('\t'); break;
      case 'r': out.push_back('\r'); break;
      case '\\': out.push_back('\\'); break;
      case '\'': out.push_back('\''); break;
      case '"': out.push_back('"'); break;
      case 'a': out.push_back('\a'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'v': out.push_back('\v'); break;
      case '\n': break;  // line continuation
      case 'x': utf8_append(out, hexval(2)); break;
      case 'u': utf8_append(out, hexval(4)); break;
      case 'U': {
        char32_t v = hexval(8);
        if (v > 0x10FFFF) lex_fail(line, "invalid \\U escape in string literal");
        utf8_append(out, v);
        break;
      }
      default:
        if (e >= '0' && e <= '7') {
          int v = e - '0';
          for (int k = 0; k < 2 && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7'; ++k) v = v * 8 + (s[++i] - '0');
          utf8_append(out, char32_t(v));
        } else {  // unknown escapes stay as written
          out.push_back('\\');
          out.push_back(e);
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string_view src) {
    // Normalise newlines, then drop one trailing newline (jinja2's keep_trailing_newline=False).
    src_.reserve(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      if (src[i] == '\r') {
        src_.push_back('\n');
        if (i + 1 < src.size() && src[i + 1] == '\n') ++i;
      } else {
        src_.push_back(src[i]);
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Token> run() {
    size_t n = src_.size();
    while (pos_ < n) {
      size_t p = find_tag(pos_);
      std::string_view text(src_.data() + pos_, (p == std::string::npos ? n : p) - pos_);
      if (p == std::string::npos) {
        emit_data(std::string(text));
        line_ += count_newlines(text);
        break;
      }
      char kind = src_[p + 1];
      char sign = p + 2 < n && (src_[p + 2] == '-' || src_[p + 2] == '+') ? src_[p + 2] : 0;
      int text_lines = count_newlines(text);
      std::string data;
      if (sign == '-') {
        data = rstrip_ws(text);
      } else if (sign != '+' && kind != '{') {
        data = lstrip_line(text);
      } else {
        data = std::string(text);
      }
      emit_data(std::move(data));
      line_ += text_lines;
      pos_ = p + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        comment(p);
      } else if (kind == '%' && try_raw(p, sign)) {
        // handled
      } else {
        tag(kind);
      }
    }
    toks_.push_back({Tok::Eof, line_, {}});
    return std::move(toks_);
  }

 private:
  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;  // the previous token ended with a newline (or start of input)
  std::vector<Token> toks_;

  size_t find_tag(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return std::string::npos;
  }

  // lstrip_blocks: whitespace between the last newline and the tag goes, if nothing else is there.
  std::string lstrip_line(std::string_view text) const {
    size_t nl = text.rfind('\n');
    size_t l_pos = nl == std::string_view::npos ? 0 : nl + 1;
    if (l_pos > 0 || line_starting_) {
      bool all_ws = l_pos < text.size();
      for (size_t i = l_pos; i < text.size(); ++i) all_ws = all_ws && is_ws(text[i]);
      if (all_ws) return std::string(text.substr(0, l_pos));
    }
    return std::string(text);
  }

  void emit_data(std::string s) {
    if (!s.empty()) toks_.push_back({Tok::Data, line_, std::move(s)});
  }

  // After a tag end: '-' strips all following whitespace; trim_blocks drops one newline.
  void after_tag_end(bool strip, bool trim) {
    if (strip) {
      size_t s = pos_;
      while (pos_ < src_.size() && is_ws(src_[pos_])) ++pos_;
      line_ += count_newlines(std::string_view(src_).substr(s, pos_ - s));
      line_starting_ = pos_ > s && src_[pos_ - 1] == '\n';
    } else if (trim && pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_;
      ++line_;
      line_starting_ = true;
    } else {
      line_starting_ = false;
    }
  }

  void comment(size_t start) {
    size_t body = pos_;
    size_t e = src_.find("#}", body);
    if (e == std::string::npos) lex_fail(line_, "unterminated comment (missing '#}')");
    bool strip = e > body && src_[e - 1] == '-';
    line_ += count_newlines(std::string_view(src_).substr(body, e - body));
    pos_ = e + 2;
    after_tag_end(strip, true);
    (void)start;
  }

  // {% raw %}...{% endraw %}: the body is data, untouched.
  bool try_raw(size_t start, char sign) {
    size_t i = pos_;
    while (i < src_.size() && is_ws(src_[i])) ++i;
    if (src_.compare(i, 3, "raw") != 0) return false;
    i += 3;
    if (i < src_.size() && (isalnum((unsigned char)src_[i]) || src_[i] == '_')) return false;
    while (i < src_.size() && is_ws(src_[i])) ++i;
    bool strip_after = false;
    if (src_.compare(i, 3, "-%}") == 0) {
      strip_after = true;
      i += 3;
    } else if (src_.compare(i, 2, "%}") == 0) {
      i += 2;
    } else {
      return false;
    }
    int open_line = line_;
    line_ += count_newlines(std::string_view(src_).substr(pos_, i - pos_));
    pos_ = i;
    if (strip_after)
      while (pos_ < src_.size() && is_ws(src_[pos_])) line_ += src_[pos_++] == '\n';
    // find {%[-+]? endraw [-+]?%}
    for (size_t p = find_tag(pos_); p != std::string::npos; p = find_tag(p + 1)) {
      if (src_[p + 1] != '%') continue;
      size_t j = p + 2;
      char esign = j < src_.size() && (src_[j] == '-' || src_[j] == '+') ? src_[j] : 0;
      if (esign) ++j;
      while (j < src_.size() && is_ws(src_[j])) ++j;
      if (src_.compare(j, 6, "endraw") != 0) continue;
      j += 6;
      while (j < src_.size() && is_ws(src_[j])) ++j;
      bool estrip = false, eplus = false;
      if (src_.compare(j, 3, "-%}") == 0) {
        estrip = true;
        j += 3;
      } else if (src_.compare(j, 3, "+%}") == 0) {
        eplus = true;
        j += 3;
      } else if (src_.compare(j, 2, "%}") == 0) {
        j += 2;
      } else {
        continue;
      }
      std::string_view body(src_.data() + pos_, p - pos_);
      emit_data(esign == '-' ? rstrip_ws(body) : std::string(body));
      line_ += count_newlines(std::string_view(src_).substr(pos_, j - pos_));
      pos_ = j;
      after_tag_end(estrip, !eplus);
      return true;
    }
    lex_fail(open_line, "unterminated 'raw' block (missing '{% endraw %}')");
    (void)start;
    (void)sign;
  }

  void tag(char kind) {
    int open_line = line_;
    toks_.push_back({kind == '{' ? Tok::VarBegin : Tok::BlockBegin, line_, {}});
    int depth = 0;  // open brackets: tag ends are only recognised when balanced, as in jinja2
    size_t n = src_.size();
    while (true) {
      while (pos_ < n && is_ws(src_[pos_])) line_ += src_[pos_++] == '\n';
      if (pos_ >= n)
        lex_fail(open_line, std::string("unterminated tag (missing '") + (kind == '{' ? "}}" : "%}") + "')");
      if (depth == 0) {
        const char* end = kind == '{' ? "}}" : "%}";
        if (src_.compare(pos_, 2, end) == 0) {
          pos_ += 2;
          toks_.push_back({kind == '{' ? Tok::VarEnd : Tok::BlockEnd, line_, {}});
          after_tag_end(false, kind == '%');
          return;
        }
        if ((src_[pos_] == '-' || (src_[pos_] == '+' && kind == '%')) && src_.compare(pos_ + 1, 2, end) == 0) {
          char s = src_[pos_];
          pos_ += 3;
          toks_.push_back({kind == '{' ? Tok::VarEnd : Tok::BlockEnd, line_, {}});
          after_tag_end(s == '-', false);
          return;
        }
      }
      char c = src_[pos_];
      if (isalpha((unsigned char)c) || c == '_') {
        size_t s = pos_;
        while (pos_ < n && (isalnum((unsigned char)src_[pos_]) || src_[pos_] == '_')) ++pos_;
        toks_.push_back({Tok::Name, line_, src_.substr(s, pos_ - s)});
      } else if (isdigit((unsigned char)c)) {
        number();
      } else if (c == '\'' || c == '"') {
        size_t s = ++pos_;
        int str_line = line_;
        while (pos_ < n && src_[pos_] != c) {
          if (src_[pos_] == '\\') ++pos_;
          ++pos_;
        }
        if (pos_ >= n) lex_fail(str_line, "unterminated string literal");
        std::string_view body(src_.data() + s, pos_ - s);
        line_ += count_newlines(body);
        ++pos_;
        toks_.push_back({Tok::String, str_line, unescape(body, str_line)});
      } else {
        static const char* ops2[] = {"//", "**", "==", "!=", "<=", ">="};
        std::string op;
        for (const char* o : ops2)
          if (src_.compare(pos_, 2, o) == 0) op = o;
        if (op.empty()) {
          if (!std::strchr("+-*/%~<>=()[]{},.:|;", c)) lex_fail(line_, std::string("unexpected character '") + c + "' in tag");
          op = std::string(1, c);
        }
        if (op == "(" || op == "[" || op == "{") ++depth;
        if ((op == ")" || op == "]" || op == "}") && depth > 0) --depth;
        pos_ += op.size();
        toks_.push_back({Tok::Op, line_, op});
      }
    }
  }

  void number() {
    size_t n = src_.size();
    size_t s = pos_;
    auto digits = [&] {
      while (pos_ < n && (isdigit((unsigned char)src_[pos_]) || (src_[pos_] == '_' && pos_ + 1 < n && isdigit((unsigned char)src_[pos_ + 1]))))
        ++pos_;
    };
    if (src_[pos_] == '0' && pos_ + 1 < n && strchr("xXoObB", src_[pos_ + 1])) {
      int base = strchr("xX", src_[pos_ + 1]) ? 16 : strchr("oO", src_[pos_ + 1]) ? 8 : 2;
      pos_ += 2;
      size_t ds = pos_;
      while (pos_ < n && (isxdigit((unsigned char)src_[pos_]) || src_[pos_] == '_')) ++pos_;
      std::string d;
      for (size_t i = ds; i < pos_; ++i)
        if (src_[i] != '_') d.push_back(src_[i]);
      if (d.empty()) lex_fail(line_, "invalid integer literal");
      errno = 0;
      long long v = strtoll(d.c_str(), nullptr, base);
      if (errno) lex_fail(line_, "integer literal out of range");
      toks_.push_back({Tok::Int, line_, src_.substr(s, pos_ - s), v});
      return;
    }
    digits();
    bool is_float = false;
    if (pos_ + 1 < n && src_[pos_] == '.' && isdigit((unsigned char)src_[pos_ + 1])) {
      is_float = true;
      ++pos_;
      digits();
    }
    if (pos_ < n && (src_[pos_] == 'e' || src_[pos_] == 'E')) {
      size_t save = pos_;
      ++pos_;
      if (pos_ < n && (src_[pos_] == '+' || src_[pos_] == '-')) ++pos_;
      if (pos_ < n && isdigit((unsigned char)src_[pos_])) {
        is_float = true;
        digits();
      } else {
        pos_ = save;
      }
    }
    std::string lit;
    for (size_t i = s; i < pos_; ++i)
      if (src_[i] != '_') lit.push_back(src_[i]);
    Token t{is_float ? Tok::Float : Tok::Int, line_, lit};
    if (is_float) {
      t.fval = strtod(lit.c_str(), nullptr);
    } else {
      errno = 0;
      t.ival = strtoll(lit.c_str(), nullptr, 10);
      if (errno) lex_fail(line_, "integer literal out of range: " + lit);
    }
    toks_.push_back(std::move(t));
  }
};

}  // namespace

std::vector<Token> lex_template(std::string_view source) { return Lexer(source).run(); }

}  // namespace gale::jinja
