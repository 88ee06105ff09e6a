// JSON schema -> GBNF, choice -> GBNF, and the generic JSON grammar.
//
// Supported: type (one or a list), nullable, const, enum, anyOf / oneOf (as alternatives: oneOf's
// exclusivity is not enforced), allOf of one schema, $ref to #/$defs, #/definitions or # (so
// recursive schemas work), objects with properties in their declared order, required ones always
// and optional ones maybe (no keys outside `properties`, whatever additionalProperties says,
// except for an object without properties: then additionalProperties true / a schema gives a
// map), arrays with items / minItems / maxItems, strings with minLength / maxLength or a pattern
// (searched, as JSON schema does, unless anchored), integer (minimum 0 or 1 allowed), number,
// boolean, null. Keywords that would need more (not, if, minimum in general, uniqueItems, ...)
// are refused with gale::Error naming them, so an output never silently breaks its schema.
// Numbers have at most 16 integer digits, 16 fraction digits and a 2-digit exponent (finite).
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "grammar/grammar.h"
#include "grammar/regex_gbnf.h"

namespace gale {

namespace {

using json = nlohmann::json;

constexpr int64_t kMaxItemsBound = 1000;
constexpr int64_t kMaxLengthBound = 10000;

// A GBNF string literal holding exactly the bytes of s.
std::string lit(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c < 0x20 || c == 0x7F) {
      static const char* hex = "0123456789ABCDEF";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += char(c);
    }
  }
  return out + "\"";
}

const char* kPrimitives[][2] = {
    {"ws", "[ \\t\\n]{0,8}"},
    {"value", "object | array | string | number | \"true\" | \"false\" | \"null\""},
    {"object", "\"{\" ws ( string ws \":\" ws value ( ws \",\" ws string ws \":\" ws value )* )? ws \"}\""},
    {"array", "\"[\" ws ( value ( ws \",\" ws value )* )? ws \"]\""},
    {"string", "\"\\\"\" char* \"\\\"\""},
    // One character of a JSON string: raw, or an escape (\u without surrogates, so that the
    // decoded string has one code point per char, as minLength/maxLength count them).
    {"char",
     "[^\"\\\\\\x00-\\x1F] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" ( [0-9a-cA-Ce-fE-F] [0-9a-fA-F]{3} | [dD] [0-7] "
     "[0-9a-fA-F]{2} ) )"},
    {"integer", "\"-\"? ( \"0\" | [1-9] [0-9]{0,15} )"},
    {"number", "\"-\"? ( \"0\" | [1-9] [0-9]{0,15} ) ( \".\" [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,2} )?"},
    {"boolean", "\"true\" | \"false\""},
    {"null", "\"null\""},
};

class SchemaCompiler {
 public:
  explicit SchemaCompiler(const json& root) : root_(root) {}

  std::string run() {
    std::string expr = visit(root_, "root-value", 0);
    std::string out = "root ::= " + expr + "\n";
    for (const auto& [name, body] : rules_) out += name + " ::= " + body + "\n";
    for (const std::string& p : used_prims_)
      for (const auto& pr : kPrimitives)
        if (p == pr[0]) out += std::string(pr[0]) + " ::= " + pr[1] + "\n";
    return out;
  }

  std::string prim(const std::string& name) {
    if (used_prims_.insert(name).second) {
      // Their dependencies.
      if (name == "value") {
        for (const char* d : {"object", "array", "string", "number"}) prim(d);
      }
      if (name == "object" || name == "array") {
        prim("value");
        prim("string");
      }
      if (name == "string") prim("char");
      prim("ws");
    }
    return name;
  }

 private:
  [[noreturn]] static void unsupported(const std::string& what) {
    throw Error("json schema: " + what + " is not supported");
  }

  std::string add(const std::string& hint, const std::string& body) {
    auto it = by_body_.find(body);
    if (it != by_body_.end()) return it->second;
    std::string name = fresh(hint);
    rules_.emplace_back(name, body);
    by_body_.emplace(body, name);
    return name;
  }
  std::string fresh(const std::string& hint) {
    std::string base;
    for (char c : hint) base += (std::isalnum(uint8_t(c)) || c == '-') ? c : '-';
    if (base.empty() || base.size() > 40) base = "r";
    std::string name = base;
    for (int k = 1; used_names_.count(name) || name == "root" || is_prim(name); ++k) name = base + "-" + std::to_string(k);
    used_names_.insert(name);
    return name;
  }
  static bool is_prim(const std::string& n) {
    for (const auto& p : kPrimitives)
      if (n == p[0]) return true;
    return false;
  }

  const json& resolve(const std::string& ref) {
    if (ref == "#") return root_;
    if (ref.rfind("#/", 0) != 0) unsupported("$ref '" + ref + "' (only local references)");
    const json* cur = &root_;
    size_t i = 2;
    while (i <= ref.size()) {
      size_t j = ref.find('/', i);
      if (j == std::string::npos) j = ref.size();
      std::string part = ref.substr(i, j - i);
      std::string key;
      for (size_t k = 0; k < part.size(); ++k) {
        if (part[k] == '~' && k + 1 < part.size() && (part[k + 1] == '0' || part[k + 1] == '1')) {
          key += part[k + 1] == '0' ? '~' : '/';
          ++k;
        } else {
          key += part[k];
        }
      }
      if (!cur->is_object() || !cur->contains(key)) throw Error("json schema: $ref '" + ref + "' does not resolve");
      cur = &(*cur)[key];
      i = j + 1;
    }
    return *cur;
  }

  std::string visit(const json& s, const std::string& hint, int depth) {
    if (depth > 64) throw Error("json schema: nested too deep");
    if (s.is_boolean()) {
      if (!s.get<bool>()) throw Error("json schema: 'false' matches nothing");
      return prim("value");
    }
    if (!s.is_object()) throw Error("json schema: a schema must be an object or a boolean");
    static const char* kRefused[] = {"not", "if", "then", "else", "patternProperties", "minProperties",
                                     "maxProperties", "dependentRequired", "dependentSchemas", "multipleOf",
                                     "maximum", "exclusiveMaximum", "exclusiveMinimum", "contains", "prefixItems",
                                     "unevaluatedProperties", "unevaluatedItems", "propertyNames", "minContains",
                                     "maxContains", "dependencies", "additionalItems"};
    for (const char* k : kRefused)
      if (s.contains(k)) unsupported(std::string("keyword '") + k + "'");
    if (s.contains("uniqueItems") && s["uniqueItems"] == true) unsupported("keyword 'uniqueItems'");

    if (s.contains("$ref")) {
      if (!s["$ref"].is_string()) throw Error("json schema: $ref must be a string");
      std::string ref = s["$ref"].get<std::string>();
      auto it = refs_.find(ref);
      if (it != refs_.end()) return it->second;
      std::string name = fresh("ref-" + ref.substr(ref.rfind('/') + 1));
      refs_.emplace(ref, name);
      size_t slot = rules_.size();
      rules_.emplace_back(name, "");
      std::string body = visit(resolve(ref), name, depth + 1);
      rules_[slot].second = body;
      return name;
    }
    bool nullable = s.contains("nullable") && s["nullable"] == true;
    std::string e = visit_inner(s, hint, depth);
    if (nullable) return add(hint + "-or-null", e + " | " + prim("null"));
    return e;
  }

  std::string alts(const json& list, const std::string& hint, int depth, const char* kw) {
    if (!list.is_array() || list.empty()) throw Error(std::string("json schema: ") + kw + " must be a non-empty array");
    std::string body;
    for (size_t k = 0; k < list.size(); ++k) {
      if (k) body += " | ";
      body += visit(list[k], hint + "-" + std::to_string(k), depth + 1);
    }
    return add(hint, body);
  }

  std::string visit_inner(const json& s, const std::string& hint, int depth) {
    if (s.contains("const")) return add(hint + "-const", lit(s["const"].dump()));
    if (s.contains("enum")) {
      const json& e = s["enum"];
      if (!e.is_array() || e.empty()) throw Error("json schema: enum must be a non-empty array");
      std::string body;
      for (size_t k = 0; k < e.size(); ++k) body += (k ? " | " : "") + lit(e[k].dump());
      return add(hint + "-enum", body);
    }
    if (s.contains("anyOf")) return alts(s["anyOf"], hint, depth, "anyOf");
    if (s.contains("oneOf")) return alts(s["oneOf"], hint, depth, "oneOf");
    if (s.contains("allOf")) {
      const json& a = s["allOf"];
      if (!a.is_array() || a.size() != 1) unsupported("allOf with more than one schema");
      return visit(a[0], hint, depth + 1);
    }
    std::vector<std::string> types;
    if (s.contains("type")) {
      const json& t = s["type"];
      if (t.is_string()) {
        types.push_back(t.get<std::string>());
      } else if (t.is_array() && !t.empty()) {
        for (const json& x : t) {
          if (!x.is_string()) throw Error("json schema: type must be a string or a list of strings");
          types.push_back(x.get<std::string>());
        }
      } else {
        throw Error("json schema: type must be a string or a list of strings");
      }
    } else if (s.contains("properties")) {
      types.push_back("object");
    } else if (s.contains("items")) {
      types.push_back("array");
    } else {
      return prim("value");
    }
    std::string body;
    for (size_t k = 0; k < types.size(); ++k) body += (k ? " | " : "") + typed(s, types[k], hint, depth);
    return types.size() == 1 ? body : add(hint, body);
  }

  static int64_t get_count(const json& s, const char* key, int64_t def, int64_t bound) {
    if (!s.contains(key)) return def;
    const json& v = s[key];
    if (!v.is_number_integer() && !(v.is_number_float() && v.get<double>() == double(int64_t(v.get<double>()))))
      throw Error(std::string("json schema: ") + key + " must be an integer");
    int64_t n = v.is_number_integer() ? v.get<int64_t>() : int64_t(v.get<double>());
    if (n < 0) throw Error(std::string("json schema: ") + key + " must not be negative");
    if (n > bound) unsupported(std::string(key) + " over " + std::to_string(bound));
    return n;
  }

  static std::string braces(int64_t lo, int64_t hi) {  // hi -1: unbounded
    if (hi < 0) return lo == 0 ? "*" : lo == 1 ? "+" : "{" + std::to_string(lo) + ",}";
    return "{" + std::to_string(lo) + "," + std::to_string(hi) + "}";
  }

  std::string typed(const json& s, const std::string& type, const std::string& hint, int depth) {
    if (type == "null") return prim("null");
    if (type == "boolean") return prim("boolean");
    if (type == "integer" || type == "number") {
      if (s.contains("minimum")) {
        const json& m = s["minimum"];
        if (type == "integer" && m.is_number() && m.get<double>() == 0) return add("uint", "\"0\" | [1-9] [0-9]{0,15}");
        if (type == "integer" && m.is_number() && m.get<double>() == 1) return add("posint", "[1-9] [0-9]{0,15}");
        unsupported("keyword 'minimum' other than 0 or 1 on an integer");
      }
      return prim(type);
    }
    if (type == "string") {
      for (const char* k : {"format", "contentEncoding", "contentMediaType"})
        if (s.contains(k) && k != std::string("format")) unsupported(std::string("keyword '") + k + "'");
      if (s.contains("pattern")) {
        if (s.contains("minLength") || s.contains("maxLength")) unsupported("pattern with minLength/maxLength");
        if (!s["pattern"].is_string()) throw Error("json schema: pattern must be a string");
        std::string p = s["pattern"].get<std::string>();
        if (p.empty() || p[0] != '^') p = ".*(" + p + ")";
        else p = p.substr(1);
        if (p.empty() || p.back() != '$' || (p.size() >= 2 && p[p.size() - 2] == '\\')) p = "(" + p + ").*";
        return add(hint + "-pattern", "\"\\\"\" " + regex_to_gbnf_expr(p, true) + " \"\\\"\"");
      }
      int64_t lo = get_count(s, "minLength", 0, kMaxLengthBound), hi = get_count(s, "maxLength", -1, kMaxLengthBound);
      if (hi >= 0 && hi < lo) throw Error("json schema: maxLength < minLength");
      if (lo == 0 && hi < 0) return prim("string");
      prim("char");
      return add(hint + "-string", "\"\\\"\" char" + braces(lo, hi) + " \"\\\"\"");
    }
    if (type == "array") {
      std::string item = s.contains("items") ? visit(s["items"], hint + "-item", depth + 1) : prim("value");
      int64_t lo = get_count(s, "minItems", 0, kMaxItemsBound), hi = get_count(s, "maxItems", -1, kMaxItemsBound);
      if (hi >= 0 && hi < lo) throw Error("json schema: maxItems < minItems");
      prim("ws");
      if (hi == 0) return add(hint + "-array", "\"[\" ws \"]\"");
      std::string rest = "( ws \",\" ws " + item + " )" + braces(lo > 0 ? lo - 1 : 0, hi < 0 ? -1 : hi - 1);
      std::string elems = item + " " + rest;
      if (lo == 0) elems = "( " + elems + " )?";
      return add(hint + "-array", "\"[\" ws " + elems + " ws \"]\"");
    }
    if (type == "object") return object(s, hint, depth);
    throw Error("json schema: unknown type '" + type + "'");
  }

  std::string object(const json& s, const std::string& hint, int depth) {
    prim("ws");
    const json* props = s.contains("properties") ? &s["properties"] : nullptr;
    if (props && !props->is_object()) throw Error("json schema: properties must be an object");
    std::vector<std::string> keys;
    if (props)
      for (auto it = props->begin(); it != props->end(); ++it) keys.push_back(it.key());
    // nlohmann's json orders keys alphabetically; the declared order is lost, so keys come
    // sorted (still a valid order: JSON objects are unordered).
    std::set<std::string> required;
    if (s.contains("required")) {
      if (!s["required"].is_array()) throw Error("json schema: required must be an array");
      for (const json& r : s["required"]) {
        if (!r.is_string()) throw Error("json schema: required must hold strings");
        required.insert(r.get<std::string>());
        if (!props || !props->contains(r.get<std::string>())) keys.push_back(r.get<std::string>());
      }
    }
    if (keys.empty()) {
      const json* ap = s.contains("additionalProperties") ? &s["additionalProperties"] : nullptr;
      if (ap && ap->is_boolean() && !ap->get<bool>()) return add("empty-object", "\"{\" ws \"}\"");
      if (ap && ap->is_object()) {
        std::string v = visit(*ap, hint + "-value", depth + 1);
        prim("string");
        std::string kv = prim("string") + " ws \":\" ws " + v;
        return add(hint + "-map", "\"{\" ws ( " + kv + " ( ws \",\" ws " + kv + " )* )? ws \"}\"");
      }
      return prim("object");
    }
    std::vector<std::string> kvs;
    for (const std::string& k : keys) {
      const json& ps = props && props->contains(k) ? (*props)[k] : json(true);
      kvs.push_back(lit(json(k).dump()) + " ws \":\" ws " + visit(ps, hint + "-" + k, depth + 1));
    }
    // first[i]: properties i.. with none written yet; more[i]: with one written before (each
    // then starts with a comma). Required ones are always written, optional ones maybe.
    size_t n = keys.size();
    std::vector<std::string> first(n + 1), more(n + 1);
    first[n] = more[n] = "";
    for (size_t i = n; i-- > 0;) {
      bool req = required.count(keys[i]) > 0;
      std::string with_more = more[i + 1].empty() ? "" : " " + more[i + 1];
      std::string m = "ws \",\" ws " + kvs[i] + with_more;
      std::string f = kvs[i] + with_more;
      if (!req) {
        m += more[i + 1].empty() ? " | \"\"" : " | " + more[i + 1];
        f += first[i + 1].empty() ? " | \"\"" : " | " + first[i + 1];
      }
      more[i] = add(hint + "-more", m);
      first[i] = add(hint + "-props", f);
    }
    return add(hint + "-object", "\"{\" ws " + first[0] + " ws \"}\"");
  }

  const json& root_;
  std::vector<std::pair<std::string, std::string>> rules_;
  std::map<std::string, std::string> by_body_;
  std::map<std::string, std::string> refs_;
  std::set<std::string> used_names_;
  std::set<std::string> used_prims_;
};

}  // namespace

std::string json_schema_to_gbnf(const nlohmann::json& schema) { return SchemaCompiler(schema).run(); }

std::string json_object_gbnf() {
  json empty = json::object();
  SchemaCompiler c(empty);
  c.prim("object");
  std::string out = c.run();
  // run() made root the generic value; json_object wants an object.
  return "root ::= object\n" + out.substr(out.find('\n') + 1);
}

std::string choice_to_gbnf(const std::vector<std::string>& choices) {
  if (choices.empty()) throw Error("choice: the list of choices is empty");
  std::string out = "root ::= ";
  for (size_t k = 0; k < choices.size(); ++k) {
    if (choices[k].empty()) throw Error("choice: an empty string is not a choice");
    out += (k ? " | " : "") + lit(choices[k]);
  }
  return out + "\n";
}

std::string constraint_to_gbnf(const ConstraintSpec& spec) {
  switch (spec.kind) {
    case ConstraintSpec::Kind::JsonSchema: {
      json j;
      try {
        j = json::parse(spec.text);
      } catch (const json::exception& e) {
        throw Error(std::string("json schema: invalid JSON: ") + e.what());
      }
      return json_schema_to_gbnf(j);
    }
    case ConstraintSpec::Kind::JsonObject: return json_object_gbnf();
    case ConstraintSpec::Kind::Regex: return regex_to_gbnf(spec.text);
    case ConstraintSpec::Kind::Choice: {
      json j;
      try {
        j = json::parse(spec.text);
      } catch (const json::exception& e) {
        throw Error(std::string("choice: invalid JSON: ") + e.what());
      }
      if (!j.is_array()) throw Error("choice: expected a list of strings");
      std::vector<std::string> c;
      for (const json& x : j) {
        if (!x.is_string()) throw Error("choice: expected a list of strings");
        c.push_back(x.get<std::string>());
      }
      return choice_to_gbnf(c);
    }
    case ConstraintSpec::Kind::Grammar: return spec.text;
    case ConstraintSpec::Kind::None: break;
  }
  throw Error("grammar: no constraint");
}

}  // namespace gale
