// Runtime values of the Jinja2 interpreter: construction, Python str()/repr(), equality, JSON.
#include "tokenizer/jinja_value.h"

#include <utf8proc.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "tokenizer/unicode_util.h"

namespace gale::jinja {

namespace {
constexpr int kMaxDepth = 256;  // nesting bound for recursive printing/compare (cycles via namespaces)

[[noreturn]] void fail_depth() { throw Error("chat template: value nesting too deep (cyclic namespace?)"); }
}  // namespace

// ---------------------------------------------------------------------------------------
// ObjectData
// ---------------------------------------------------------------------------------------

namespace {

// Moves v onto `pending` when it holds the last reference to a container, so the container
// dies there, one at a time, instead of inside its parent's destructor.
void defer_container(Value& v, std::vector<Value>& pending) {
  if (v.sole_array() || v.sole_object()) pending.push_back(std::move(v));
}

// Frees the deferred containers: each gives up its own containers before it dies, so no
// destructor runs inside another one more than one level deep.
void free_deferred(std::vector<Value>& pending) {
  while (!pending.empty()) {
    Value v = std::move(pending.back());
    pending.pop_back();
    if (ArrayData* a = v.sole_array())
      for (Value& c : a->items) defer_container(c, pending);
    if (ObjectData* o = v.sole_object())
      for (auto& kv : o->items) defer_container(kv.second, pending);
  }
}

}  // namespace

ArrayData::~ArrayData() {
  std::vector<Value> pending;
  for (Value& c : items) defer_container(c, pending);
  free_deferred(pending);
}

ObjectData::~ObjectData() {
  std::vector<Value> pending;
  for (auto& kv : items) defer_container(kv.second, pending);
  free_deferred(pending);
}

const Value* ObjectData::find(std::string_view key) const {
  auto it = index.find(std::string(key));
  return it == index.end() ? nullptr : &items[it->second].second;
}

void ObjectData::set(const std::string& key, Value v) {
  auto it = index.find(key);
  if (it != index.end()) {
    items[it->second].second = std::move(v);
    return;
  }
  index.emplace(key, items.size());
  items.emplace_back(key, std::move(v));
}

// ---------------------------------------------------------------------------------------
// Value
// ---------------------------------------------------------------------------------------

Value Value::undefined(std::string hint) {
  Value v;
  if (!hint.empty()) v.s_ = std::make_shared<const std::string>(std::move(hint));
  return v;
}
Value Value::none() {
  Value v;
  v.kind_ = Kind::None;
  return v;
}
Value Value::boolean(bool b) {
  Value v;
  v.kind_ = Kind::Bool;
  v.b_ = b;
  return v;
}
Value Value::integer(int64_t i) {
  Value v;
  v.kind_ = Kind::Int;
  v.i_ = i;
  return v;
}
Value Value::number(double d) {
  Value v;
  v.kind_ = Kind::Float;
  v.f_ = d;
  return v;
}
Value Value::string(std::string s) {
  Value v;
  v.kind_ = Kind::String;
  v.s_ = std::make_shared<const std::string>(std::move(s));
  return v;
}
Value Value::array(std::vector<Value> items, bool is_tuple) {
  Value v;
  v.kind_ = Kind::Array;
  v.a_ = std::make_shared<ArrayData>();
  v.a_->items = std::move(items);
  v.a_->is_tuple = is_tuple;
  return v;
}
Value Value::object(std::shared_ptr<ObjectData> o) {
  Value v;
  v.kind_ = Kind::Object;
  v.o_ = o ? std::move(o) : std::make_shared<ObjectData>();
  return v;
}
Value Value::callable(std::shared_ptr<Callable> c) {
  Value v;
  v.kind_ = Kind::Callable;
  v.c_ = std::move(c);
  return v;
}

Value Value::from_json(const nlohmann::ordered_json& j, int depth) {
  if (depth > kMaxDepth) fail_depth();
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return none();
    case nlohmann::ordered_json::value_t::boolean: return boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return integer(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      uint64_t u = j.get<uint64_t>();
      if (u > uint64_t(INT64_MAX)) return number(double(u));
      return integer(int64_t(u));
    }
    case nlohmann::ordered_json::value_t::number_float: return number(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return string(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (auto& e : j) items.push_back(from_json(e, depth + 1));
      return array(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      auto o = std::make_shared<ObjectData>();
      for (auto it = j.begin(); it != j.end(); ++it) o->set(it.key(), from_json(it.value(), depth + 1));
      return object(std::move(o));
    }
    default: return none();
  }
}

bool Value::truthy() const {
  switch (kind_) {
    case Kind::Undefined:
    case Kind::None: return false;
    case Kind::Bool: return b_;
    case Kind::Int: return i_ != 0;
    case Kind::Float: return f_ != 0.0;
    case Kind::String: return !s_->empty();
    case Kind::Array: return !a_->items.empty();
    case Kind::Object: return o_->is_namespace || !o_->items.empty();
    case Kind::Callable: return true;
  }
  return false;
}

std::string Value::type_name() const {
  switch (kind_) {
    case Kind::Undefined: return "Undefined";
    case Kind::None: return "NoneType";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::Array: return a_->is_tuple ? "tuple" : "list";
    case Kind::Object: return o_->is_namespace ? "Namespace" : "dict";
    case Kind::Callable: return "function";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------
// UTF-8
// ---------------------------------------------------------------------------------------

std::u32string utf8_decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    utf8proc_int32_t cp;
    auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                              utf8proc_ssize_t(s.size() - i), &cp);
    if (n <= 0) {  // invalid byte: keep it as U+FFFD so lengths stay sane
      out.push_back(0xFFFD);
      i += 1;
    } else {
      out.push_back(char32_t(cp));
      i += size_t(n);
    }
  }
  return out;
}

void utf8_append(std::string& out, char32_t cp) { tok::utf8_append(out, uint32_t(cp)); }

std::string utf8_encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) utf8_append(out, c);
  return out;
}

size_t utf8_length(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool is_py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// ---------------------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------------------

std::string format_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // like "-1.2345e+17"
  bool neg = sci[0] == '-';
  if (neg) sci.erase(0, 1);
  size_t epos = sci.find('e');
  int exp = std::stoi(sci.substr(epos + 1));
  std::string digits;
  for (size_t i = 0; i < epos; ++i)
    if (sci[i] != '.') digits.push_back(sci[i]);
  std::string out = neg ? "-" : "";
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out += "0." + std::string(size_t(-exp - 1), '0') + digits;
    } else if (size_t(exp) + 1 >= digits.size()) {
      out += digits + std::string(size_t(exp) + 1 - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, size_t(exp) + 1) + "." + digits.substr(size_t(exp) + 1);
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += eb;
  }
  return out;
}

namespace {

bool is_printable(char32_t c) {
  if (c == ' ') return true;
  if (c < 0x20 || c == 0x7F) return false;
  auto cat = utf8proc_category(utf8proc_int32_t(c));
  switch (cat) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS: return false;
    default: return true;
  }
}

std::string repr_string(const std::string& s) {
  char quote = '\'';
  if (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) quote = '"';
  std::string out(1, quote);
  for (char32_t c : utf8_decode(s)) {
    if (c == char32_t(quote) || c == '\\') {
      out.push_back('\\');
      out.push_back(char(c));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (!is_printable(c)) {
      char buf[16];
      if (c < 0x100) std::snprintf(buf, sizeof buf, "\\x%02x", unsigned(c));
      else if (c < 0x10000) std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(c));
      else std::snprintf(buf, sizeof buf, "\\U%08x", unsigned(c));
      out += buf;
    } else {
      utf8_append(out, c);
    }
  }
  out.push_back(quote);
  return out;
}

void repr_into(std::string& out, const Value& v, int depth);

void str_into(std::string& out, const Value& v, int depth) {
  switch (v.kind()) {
    case Kind::Undefined: return;
    case Kind::String: out += v.str(); return;
    default: repr_into(out, v, depth);
  }
}

void repr_into(std::string& out, const Value& v, int depth) {
  if (depth > kMaxDepth) fail_depth();
  switch (v.kind()) {
    case Kind::Undefined: return;
    case Kind::None: out += "None"; return;
    case Kind::Bool: out += v.get_bool() ? "True" : "False"; return;
    case Kind::Int: out += std::to_string(v.get_int()); return;
    case Kind::Float: out += format_float(v.as_double()); return;
    case Kind::String: out += repr_string(v.str()); return;
    case Kind::Array: {
      bool tuple = v.array_data().is_tuple;
      out += tuple ? "(" : "[";
      const auto& items = v.items();
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += ", ";
        repr_into(out, items[i], depth + 1);
      }
      if (tuple && items.size() == 1) out += ",";
      out += tuple ? ")" : "]";
      return;
    }
    case Kind::Object: {
      if (v.obj().is_namespace) out += "<Namespace ";
      out += "{";
      bool first = true;
      for (auto& [k, val] : v.obj().items) {
        if (!first) out += ", ";
        first = false;
        out += repr_string(k);
        out += ": ";
        repr_into(out, val, depth + 1);
      }
      out += "}";
      if (v.obj().is_namespace) out += ">";
      return;
    }
    case Kind::Callable: out += "<function " + v.fn().name + ">"; return;
  }
}

}  // namespace

std::string to_str(const Value& v) {
  std::string out;
  str_into(out, v, 0);
  return out;
}

std::string repr(const Value& v) {
  std::string out;
  repr_into(out, v, 0);
  return out;
}

// ---------------------------------------------------------------------------------------
// Equality
// ---------------------------------------------------------------------------------------

namespace {
bool equals_depth(const Value& a, const Value& b, int depth) {
  if (depth > kMaxDepth) fail_depth();
  if (a.is_number() && b.is_number()) {
    if ((a.is_int() || a.is_bool()) && (b.is_int() || b.is_bool())) return a.get_int() == b.get_int();
    return a.as_double() == b.as_double();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Kind::Undefined:
    case Kind::None: return true;
    case Kind::String: return a.str() == b.str();
    case Kind::Array: {
      if (a.array_data().is_tuple != b.array_data().is_tuple) return false;
      const auto &x = a.items(), &y = b.items();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i)
        if (!equals_depth(x[i], y[i], depth + 1)) return false;
      return true;
    }
    case Kind::Object: {
      if (a.obj_ptr() == b.obj_ptr()) return true;
      if (a.obj().is_namespace || b.obj().is_namespace) return false;
      const auto &x = a.obj(), &y = b.obj();
      if (x.items.size() != y.items.size()) return false;
      for (auto& [k, v] : x.items) {
        const Value* w = y.find(k);
        if (!w || !equals_depth(v, *w, depth + 1)) return false;
      }
      return true;
    }
    case Kind::Callable: return &a.fn() == &b.fn();
    default: return false;
  }
}
}  // namespace

bool equals(const Value& a, const Value& b) { return equals_depth(a, b, 0); }

// ---------------------------------------------------------------------------------------
// JSON (Python json.dumps)
// ---------------------------------------------------------------------------------------

namespace {

void json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out.push_back('"');
  auto hex = [&](unsigned c) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "\\u%04x", c & 0xFFFFu);
    out += buf;
  };
  for (char32_t c : utf8_decode(s)) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          hex(unsigned(c));
        } else if (ensure_ascii && c > 0x7E) {
          if (c >= 0x10000) {
            char32_t v = c - 0x10000;
            hex(0xD800 + unsigned(v >> 10));
            hex(0xDC00 + unsigned(v & 0x3FF));
          } else {
            hex(unsigned(c));
          }
        } else {
          utf8_append(out, c);
        }
    }
  }
  out.push_back('"');
}

struct JsonWriter {
  int indent;
  std::string indent_str;  // used when indent was given as a string
  bool ensure_ascii;
  std::string item_sep, key_sep;
  bool sort_keys;
  std::string out;

  void newline(int level) {
    out.push_back('\n');
    for (int i = 0; i < level; ++i) out += indent_str;
  }

  void write(const Value& v, int level) {
    if (level > kMaxDepth) fail_depth();
    bool pretty = indent >= 0;
    switch (v.kind()) {
      case Kind::Undefined: throw Error("chat template: Object of type Undefined is not JSON serializable");
      case Kind::None: out += "null"; return;
      case Kind::Bool: out += v.get_bool() ? "true" : "false"; return;
      case Kind::Int: out += std::to_string(v.get_int()); return;
      case Kind::Float: {
        double d = v.as_double();
        if (std::isnan(d)) out += "NaN";
        else if (std::isinf(d)) out += d < 0 ? "-Infinity" : "Infinity";
        else out += format_float(d);
        return;
      }
      case Kind::String: json_string(out, v.str(), ensure_ascii); return;
      case Kind::Array: {
        const auto& items = v.items();
        if (items.empty()) {
          out += "[]";
          return;
        }
        out.push_back('[');
        for (size_t i = 0; i < items.size(); ++i) {
          if (i) out += item_sep;
          if (pretty) newline(level + 1);
          write(items[i], level + 1);
        }
        if (pretty) newline(level);
        out.push_back(']');
        return;
      }
      case Kind::Object: {
        if (v.obj().is_namespace) throw Error("chat template: Object of type Namespace is not JSON serializable");
        std::vector<const std::pair<std::string, Value>*> entries;
        for (auto& e : v.obj().items) entries.push_back(&e);
        if (entries.empty()) {
          out += "{}";
          return;
        }
        if (sort_keys)
          std::stable_sort(entries.begin(), entries.end(), [](auto* a, auto* b) { return a->first < b->first; });
        out.push_back('{');
        for (size_t i = 0; i < entries.size(); ++i) {
          if (i) out += item_sep;
          if (pretty) newline(level + 1);
          json_string(out, entries[i]->first, ensure_ascii);
          out += key_sep;
          write(entries[i]->second, level + 1);
        }
        if (pretty) newline(level);
        out.push_back('}');
        return;
      }
      case Kind::Callable: throw Error("chat template: Object of type function is not JSON serializable");
    }
  }
};

}  // namespace

std::string to_json(const Value& v, int indent, const std::string& indent_str, bool ensure_ascii,
                    const std::string& item_sep, const std::string& key_sep, bool sort_keys) {
  JsonWriter w{indent, indent_str, ensure_ascii, item_sep, key_sep, sort_keys, {}};
  w.write(v, 0);
  return std::move(w.out);
}

nlohmann::ordered_json to_json_value(const Value& v, int depth) {
  if (depth > kMaxDepth) fail_depth();
  switch (v.kind()) {
    case Kind::Undefined:
    case Kind::None: return nullptr;
    case Kind::Bool: return v.get_bool();
    case Kind::Int: return v.get_int();
    case Kind::Float: return v.as_double();
    case Kind::String: return v.str();
    case Kind::Array: {
      auto j = nlohmann::ordered_json::array();
      for (auto& e : v.items()) j.push_back(to_json_value(e, depth + 1));
      return j;
    }
    case Kind::Object: {
      auto j = nlohmann::ordered_json::object();
      for (auto& [k, e] : v.obj().items) j[k] = to_json_value(e, depth + 1);
      return j;
    }
    case Kind::Callable: return "<function " + v.fn().name + ">";
  }
  return nullptr;
}

}  // namespace gale::jinja
