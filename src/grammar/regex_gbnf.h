// Internal: a regex as one GBNF expression (grammar/regex_gbnf.cpp), for regex_to_gbnf and for
// JSON schema patterns (json_string: the JSON text of a matching string, escapes written out).
#pragma once
#include <string>

namespace gale {

std::string regex_to_gbnf_expr(const std::string& re, bool json_string);

}  // namespace gale
