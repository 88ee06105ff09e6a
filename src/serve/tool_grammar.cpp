// GBNF for enforced tool calls (see tool_grammar.h).
#include "serve/tool_grammar.h"

#include <cstdio>

namespace gale::serve {

using ojson = nlohmann::ordered_json;

std::string gbnf_literal(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char b[8];
          std::snprintf(b, sizeof b, "\\x%02X", c);
          out += b;
        } else {
          out += char(c);
        }
    }
  }
  return out + "\"";
}

std::string gbnf_rename_rules(const std::string& g, const std::string& name) {
  auto word = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
  };
  std::string out;
  size_t i = 0;
  auto copy_until = [&](char close) {  // a literal, class or count: up to its unescaped close
    out += g[i++];
    while (i < g.size() && g[i] != close) {
      if (g[i] == '\\' && i + 1 < g.size()) out += g[i++];
      out += g[i++];
    }
    if (i < g.size()) out += g[i++];
  };
  while (i < g.size()) {
    const char c = g[i];
    if (c == '#') {
      while (i < g.size() && g[i] != '\n') out += g[i++];
    } else if (c == '"') {
      copy_until('"');
    } else if (c == '[') {
      copy_until(']');
    } else if (c == '{') {
      copy_until('}');
    } else if (word(c)) {
      size_t b = i;
      while (i < g.size() && word(g[i])) ++i;
      const std::string id = g.substr(b, i - b);
      out += id == "root" ? name : name + "-" + id;
    } else {
      out += g[i++];
    }
  }
  return out;
}

SchemaToGbnf schema_converter(std::function<std::string(const ojson& schema)> whole_grammar) {
  return [f = std::move(whole_grammar)](const ojson& schema, const std::string& rule) {
    return gbnf_rename_rules(f(schema), rule);
  };
}

namespace {

// Any JSON object (RFC 8259), for arguments without a schema converter or schema.
const char* kJsonRules =
    "tc-json-object ::= \"{\" tc-ws ( tc-json-string tc-ws \":\" tc-ws tc-json-value tc-ws "
    "( \",\" tc-ws tc-json-string tc-ws \":\" tc-ws tc-json-value tc-ws )* )? \"}\"\n"
    "tc-json-array ::= \"[\" tc-ws ( tc-json-value tc-ws ( \",\" tc-ws tc-json-value tc-ws )* )? \"]\"\n"
    "tc-json-value ::= tc-json-object | tc-json-array | tc-json-string | tc-json-number | \"true\" | \"false\" | \"null\"\n"
    "tc-json-string ::= \"\\\"\" ( [^\"\\\\\\x00-\\x1F] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] ) )* \"\\\"\"\n"
    "tc-json-number ::= \"-\"? ( \"0\" | [1-9] [0-9]* ) ( \".\" [0-9]+ )? ( [eE] [-+]? [0-9]+ )?\n"
    "tc-ws ::= [ \\t\\n\\r]*\n";

}  // namespace

std::string tool_call_grammar(ToolCallFormat format, const ojson& tools, const std::string& only_name,
                              const SchemaToGbnf& schema_to_gbnf, bool single) {
  const char* args_key = format == ToolCallFormat::Llama3Json ? "parameters" : "arguments";
  std::string rules, alts;
  bool generic = false;
  int n = 0;
  for (const auto& t : tools) {
    const std::string name = t["function"]["name"].get<std::string>();
    if (!only_name.empty() && name != only_name) continue;
    const std::string call = "tc-call-" + std::to_string(n), args = "tc-args-" + std::to_string(n);
    ++n;
    auto params = t["function"].find("parameters");
    if (schema_to_gbnf && params != t["function"].end() && params->is_object()) {
      rules += schema_to_gbnf(*params, args);
      if (!rules.empty() && rules.back() != '\n') rules += '\n';
    } else {
      rules += args + " ::= tc-json-object\n";
      generic = true;
    }
    std::string open = "{\"name\": \"" + name + "\", \"" + args_key + "\": ";
    if (format == ToolCallFormat::Hermes)
      rules += call + " ::= " + gbnf_literal("<tool_call>\n" + open) + " " + args + " " + gbnf_literal("}\n</tool_call>") + "\n";
    else
      rules += call + " ::= " + gbnf_literal(open) + " " + args + " " + gbnf_literal("}") + "\n";
    alts += (alts.empty() ? "" : " | ") + call;
  }
  if (n == 0) return "";
  std::string root;
  const bool one = single || !only_name.empty();
  switch (format) {
    case ToolCallFormat::Hermes: root = one ? "tc-call" : "tc-call ( \"\\n\" tc-call )*"; break;
    case ToolCallFormat::Llama3Json: root = one ? "tc-call" : "tc-call ( \"; \" tc-call )*"; break;
    case ToolCallFormat::Mistral:
      root = one ? "\"[TOOL_CALLS][\" tc-call \"]\"" : "\"[TOOL_CALLS][\" tc-call ( \", \" tc-call )* \"]\"";
      break;
    case ToolCallFormat::None: return "";
  }
  std::string g = "root ::= " + root + "\ntc-call ::= " + alts + "\n" + rules;
  if (generic) g += kJsonRules;
  return g;
}

}  // namespace gale::serve
