#include "api/config_file.h"

#include <cctype>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"

namespace gale {
namespace {

bool key_char(char c) { return std::isalnum(uint8_t(c)) || c == '_' || c == '-'; }

// A TOML integer or float as this subset takes it: optional sign, digits (with single '_'
// between them), optional fraction and exponent.
bool is_number(const std::string& v) {
  size_t i = 0;
  if (i < v.size() && (v[i] == '+' || v[i] == '-')) ++i;
  auto digits = [&] {
    size_t start = i;
    while (i < v.size() && (std::isdigit(uint8_t(v[i])) || (v[i] == '_' && i > start && i + 1 < v.size() &&
                                                             std::isdigit(uint8_t(v[i + 1])))))
      ++i;
    return i > start;
  };
  if (!digits()) return false;
  if (i < v.size() && v[i] == '.') {
    ++i;
    if (!digits()) return false;
  }
  if (i < v.size() && (v[i] == 'e' || v[i] == 'E')) {
    ++i;
    if (i < v.size() && (v[i] == '+' || v[i] == '-')) ++i;
    if (!digits()) return false;
  }
  return i == v.size();
}

}  // namespace

std::vector<ConfigEntry> parse_toml_config(const std::string& text, const std::string& where) {
  std::vector<ConfigEntry> out;
  std::set<std::string> seen;
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    auto fail = [&](const std::string& what) -> Error { return Error(where + ":" + std::to_string(n) + ": " + what); };
    if (!line.empty() && line.back() == '\r') line.pop_back();
    size_t i = 0;
    auto skip_ws = [&] { while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i; };
    skip_ws();
    if (i == line.size() || line[i] == '#') continue;
    if (line[i] == '[') throw fail("tables ([...]) are not supported: every key belongs at the top level");
    ConfigEntry e;
    e.line = n;
    const size_t key_start = i;
    while (i < line.size() && key_char(line[i])) ++i;
    e.key = line.substr(key_start, i - key_start);
    if (e.key.empty()) throw fail("expected a key (letters, digits, '_' and '-')");
    skip_ws();
    if (i < line.size() && line[i] == '.') throw fail("dotted keys are not supported ('" + e.key + ".')");
    if (i == line.size() || line[i] != '=') throw fail("expected '=' after the key '" + e.key + "'");
    ++i;
    skip_ws();
    if (i == line.size() || line[i] == '#') throw fail("the key '" + e.key + "' has no value");
    const char q = line[i];
    if (q == '"' || q == '\'') {
      if (line.compare(i, 3, std::string(3, q)) == 0) throw fail("multi-line strings are not supported");
      e.is_string = true;
      ++i;
      bool closed = false;
      while (i < line.size()) {
        char c = line[i++];
        if (c == q) {
          closed = true;
          break;
        }
        if (c == '\\' && q == '"') {
          if (i == line.size()) break;
          char x = line[i++];
          switch (x) {
            case '"': e.value += '"'; break;
            case '\\': e.value += '\\'; break;
            case 'n': e.value += '\n'; break;
            case 't': e.value += '\t'; break;
            case 'r': e.value += '\r'; break;
            default: throw fail(std::string("unsupported escape '\\") + x + "' in the value of '" + e.key + "'");
          }
          continue;
        }
        e.value += c;
      }
      if (!closed) throw fail("unterminated string in the value of '" + e.key + "'");
    } else {
      const size_t v_start = i;
      while (i < line.size() && line[i] != '#' && line[i] != ' ' && line[i] != '\t') ++i;
      e.value = line.substr(v_start, i - v_start);
      if (e.value == "true" || e.value == "false") {
        e.is_bool = true;
      } else if (e.value.front() == '[' || e.value.front() == '{') {
        throw fail("arrays and inline tables are not supported (the value of '" + e.key + "')");
      } else if (!is_number(e.value)) {
        throw fail("the value of '" + e.key + "' must be a quoted string, a number, true or false (got '" + e.value +
                   "')");
      }
      std::string digits;
      for (char c : e.value)
        if (c != '_') digits += c;
      e.value = digits;
    }
    skip_ws();
    if (i < line.size() && line[i] != '#') throw fail("unexpected text after the value of '" + e.key + "'");
    if (!seen.insert(e.key).second) throw fail("the key '" + e.key + "' is given twice");
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<ConfigEntry> read_toml_config(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot read the config file " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw Error("cannot read the config file " + path);
  return parse_toml_config(ss.str(), path);
}

std::string toml_quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default: out += c;
    }
  }
  return out + "\"";
}

}  // namespace gale
