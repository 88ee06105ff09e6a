// tool_choice "required" / a named function as a grammar: the GBNF (llama.cpp's syntax) of the
// calls the model may write, in its own format, for the grammar engine to enforce.
//
//   hermes       root ::= one or more "<tool_call>\n{"name": "F", "arguments": ARGS}\n</tool_call>"
//   llama3_json  root ::= {"name": "F", "parameters": ARGS} ("; " another)*
//   mistral      root ::= "[TOOL_CALLS][" {"name": "F", "arguments": ARGS} (", " another)* "]"
//
// ARGS is the function's `parameters` schema turned into rules by `schema_to_gbnf` (the grammar
// engine's json_schema_to_gbnf); without one, or for a tool without parameters, any JSON object.
// A named tool_choice allows exactly one call of that function.
#pragma once
#include <nlohmann/json.hpp>

#include <functional>
#include <string>

#include "serve/tool_call_parser.h"

namespace gale::serve {

// Rules for `schema` whose root rule is named `rule_name`; every other rule it defines must start
// with rule_name + "-" (so several schemas share one grammar).
using SchemaToGbnf = std::function<std::string(const nlohmann::ordered_json& schema, const std::string& rule_name)>;

// tools: the request's validated `tools`; only_name: "" for any of them (required), else the one;
// single: exactly one call (a named tool_choice, or parallel_tool_calls false).
std::string tool_call_grammar(ToolCallFormat format, const nlohmann::ordered_json& tools, const std::string& only_name,
                              const SchemaToGbnf& schema_to_gbnf = {}, bool single = false);

// A whole GBNF grammar (rooted at `root`) with every rule renamed for embedding in another:
// root -> `name`, any other rule r -> `name`-r (definitions and references; literals, classes,
// comments and {m,n} counts untouched).
std::string gbnf_rename_rules(const std::string& gbnf, const std::string& name);
// A SchemaToGbnf over a converter that returns a whole grammar rooted at `root` (the grammar
// engine's json_schema_to_gbnf), its rules renamed by gbnf_rename_rules.
SchemaToGbnf schema_converter(std::function<std::string(const nlohmann::ordered_json& schema)> whole_grammar);

// A GBNF string literal for `s` ("..." with \", \\, \n, \r, \t and \xHH escaped).
std::string gbnf_literal(const std::string& s);

}  // namespace gale::serve
