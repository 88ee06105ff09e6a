// Jinja2 lexer with the whitespace rules transformers enables for chat templates:
// trim_blocks (drop the newline right after a block or comment tag), lstrip_blocks (drop
// the spaces/tabs before a block or comment tag that starts its line), `-` on either side of
// a tag (strip all whitespace on that side), `+` to opt out. The source's newlines are
// normalised to "\n" and one trailing newline is dropped (keep_trailing_newline=False).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace gale::jinja {

enum class Tok : uint8_t { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type;
  int line;
  std::string text;  // Data text, Name, decoded String, Op spelling
  int64_t ival = 0;
  double fval = 0;
};

// Throws gale::Error ("chat template line N: ...") on malformed input.
std::vector<Token> lex_template(std::string_view source);

}  // namespace gale::jinja
