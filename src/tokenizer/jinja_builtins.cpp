// Jinja2 builtins: filters, tests, attribute/item access, Python string/dict/list methods,
// and the globals transformers provides (raise_exception, strftime_now, namespace, range...).
#include <utf8proc.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <set>

#include "tokenizer/jinja_interp.h"

namespace gale::jinja {

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

[[noreturn]] void fail_undefined(const Value& v) {
  std::string hint = v.undefined_hint();
  throw RuntimeError(hint.empty() ? "value is undefined" : hint);
}

namespace {

// Maps positional and keyword arguments onto a parameter list, like a Python signature.
class Args {
 public:
  Args(const CallArgs& a, const char* fn, std::initializer_list<const char*> params) : fn_(fn) {
    names_.assign(params.begin(), params.end());
    vals_.resize(names_.size());
    set_.resize(names_.size(), false);
    if (a.pos.size() > names_.size())
      throw RuntimeError(std::string(fn) + "() takes at most " + std::to_string(names_.size()) + " argument(s), got " + std::to_string(a.pos.size()));
    for (size_t i = 0; i < a.pos.size(); ++i) {
      vals_[i] = a.pos[i];
      set_[i] = true;
    }
    for (auto& [k, v] : a.kw) {
      size_t i = 0;
      while (i < names_.size() && k != names_[i]) ++i;
      if (i == names_.size()) throw RuntimeError(std::string(fn) + "() got an unexpected keyword argument '" + k + "'");
      if (set_[i]) throw RuntimeError(std::string(fn) + "() got multiple values for argument '" + k + "'");
      vals_[i] = v;
      set_[i] = true;
    }
  }
  bool has(size_t i) const { return set_[i]; }
  const Value& get(size_t i) const { return vals_[i]; }
  Value get_or(size_t i, Value d) const { return set_[i] ? vals_[i] : d; }
  std::string str(size_t i, const std::string& d = "") const {
    if (!set_[i]) return d;
    if (!vals_[i].is_string()) throw RuntimeError(std::string(fn_) + "(): argument '" + names_[i] + "' must be a string");
    return vals_[i].str();
  }
  int64_t integer(size_t i, int64_t d) const {
    if (!set_[i] || vals_[i].is_none()) return d;
    if (!(vals_[i].is_int() || vals_[i].is_bool())) throw RuntimeError(std::string(fn_) + "(): argument '" + names_[i] + "' must be an integer");
    return vals_[i].get_int();
  }
  bool boolean(size_t i, bool d) const { return set_[i] ? vals_[i].truthy() : d; }

 private:
  const char* fn_;
  std::vector<const char*> names_;
  std::vector<Value> vals_;
  std::vector<bool> set_;
};

struct BuiltinFn : Callable {
  std::function<Value(Interp&, CallArgs&)> f;
  Value call(Interp& in, CallArgs& a) override { return f(in, a); }
};

Value make_fn(const std::string& name, std::function<Value(Interp&, CallArgs&)> f) {
  auto c = std::make_shared<BuiltinFn>();
  c->name = name;
  c->f = std::move(f);
  return Value::callable(c);
}

const std::string& need_str(const Value& v, const char* what) {
  if (!v.is_string()) throw RuntimeError(std::string(what) + ": expected a string, got '" + v.type_name() + "'");
  return v.str();
}

bool is_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

std::string map_case(std::string_view s, int mode) {  // 0 lower, 1 upper, 2 title-case one char
  std::string out;
  out.reserve(s.size());
  for (char32_t c : utf8_decode(s)) {
    utf8proc_int32_t m = mode == 0 ? utf8proc_tolower(utf8proc_int32_t(c)) : mode == 1 ? utf8proc_toupper(utf8proc_int32_t(c)) : utf8proc_totitle(utf8proc_int32_t(c));
    utf8_append(out, char32_t(m));
  }
  return out;
}
std::string lower(std::string_view s) { return map_case(s, 0); }
std::string upper(std::string_view s) { return map_case(s, 1); }

bool is_cased_letter(char32_t c) {
  return utf8proc_tolower(utf8proc_int32_t(c)) != utf8proc_int32_t(c) || utf8proc_toupper(utf8proc_int32_t(c)) != utf8proc_int32_t(c);
}
bool is_alpha(char32_t c) {
  auto cat = utf8proc_category(utf8proc_int32_t(c));
  return cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
}
bool is_digit(char32_t c) { return utf8proc_category(utf8proc_int32_t(c)) == UTF8PROC_CATEGORY_ND; }
bool is_word(char32_t c) {
  auto cat = utf8proc_category(utf8proc_int32_t(c));
  return c == '_' || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO) || cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_MC;
}

// Python str.title(): uppercase after any uncased character, lowercase otherwise.
std::string py_title(std::string_view s) {
  std::string out;
  bool prev_cased = false;
  for (char32_t c : utf8_decode(s)) {
    utf8proc_int32_t m = prev_cased ? utf8proc_tolower(utf8proc_int32_t(c)) : utf8proc_totitle(utf8proc_int32_t(c));
    utf8_append(out, char32_t(m));
    prev_cased = is_cased_letter(c);
  }
  return out;
}

std::string py_capitalize(std::string_view s) {
  auto cps = utf8_decode(s);
  std::string out;
  for (size_t i = 0; i < cps.size(); ++i)
    utf8_append(out, char32_t(i == 0 ? utf8proc_totitle(utf8proc_int32_t(cps[i])) : utf8proc_tolower(utf8proc_int32_t(cps[i]))));
  return out;
}

// str.strip/lstrip/rstrip with Python's whitespace or an explicit character set.
std::string py_strip(std::string_view s, const Value* chars, bool left, bool right) {
  auto cps = utf8_decode(s);
  std::u32string set;
  bool use_ws = !chars || chars->is_none() || chars->is_undefined();
  if (!use_ws) set = utf8_decode(need_str(*chars, "strip"));
  auto strip_it = [&](char32_t c) { return use_ws ? is_py_space(c) : set.find(c) != std::u32string::npos; };
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strip_it(cps[b])) ++b;
  if (right)
    while (e > b && strip_it(cps[e - 1])) --e;
  return utf8_encode(std::u32string_view(cps).substr(b, e - b));
}

std::vector<Value> py_split(const std::string& s, const Value* sep, int64_t maxsplit) {
  std::vector<Value> out;
  if (!sep || sep->is_none() || sep->is_undefined()) {
    auto cps = utf8_decode(s);
    size_t i = 0, n = cps.size();
    while (true) {
      while (i < n && is_py_space(cps[i])) ++i;
      if (i >= n) break;
      if (maxsplit >= 0 && int64_t(out.size()) >= maxsplit) {
        size_t e = n;
        while (e > i && is_py_space(cps[e - 1])) --e;
        out.push_back(Value::string(utf8_encode(std::u32string_view(cps).substr(i, e - i))));
        break;
      }
      size_t st = i;
      while (i < n && !is_py_space(cps[i])) ++i;
      out.push_back(Value::string(utf8_encode(std::u32string_view(cps).substr(st, i - st))));
    }
    return out;
  }
  const std::string& d = need_str(*sep, "split");
  if (d.empty()) throw RuntimeError("empty separator");
  size_t start = 0;
  while (true) {
    if (maxsplit >= 0 && int64_t(out.size()) >= maxsplit) break;
    size_t p = s.find(d, start);
    if (p == std::string::npos) break;
    out.push_back(Value::string(s.substr(start, p - start)));
    start = p + d.size();
  }
  out.push_back(Value::string(s.substr(start)));
  return out;
}

std::vector<Value> py_rsplit(const std::string& s, const Value* sep, int64_t maxsplit) {
  if (maxsplit < 0 || !sep || sep->is_none() || sep->is_undefined()) {
    if (maxsplit < 0 || !sep || sep->is_none() || sep->is_undefined()) {
      if (maxsplit < 0) return py_split(s, sep, -1);
    }
    // whitespace rsplit with maxsplit
    auto cps = utf8_decode(s);
    std::vector<Value> rev;
    size_t e = cps.size();
    while (true) {
      while (e > 0 && is_py_space(cps[e - 1])) --e;
      if (e == 0) break;
      if (int64_t(rev.size()) >= maxsplit) {
        size_t b = 0;
        while (b < e && is_py_space(cps[b])) ++b;
        rev.push_back(Value::string(utf8_encode(std::u32string_view(cps).substr(b, e - b))));
        break;
      }
      size_t b = e;
      while (b > 0 && !is_py_space(cps[b - 1])) --b;
      rev.push_back(Value::string(utf8_encode(std::u32string_view(cps).substr(b, e - b))));
      e = b;
    }
    std::reverse(rev.begin(), rev.end());
    return rev;
  }
  const std::string& d = need_str(*sep, "rsplit");
  if (d.empty()) throw RuntimeError("empty separator");
  std::vector<Value> rev;
  size_t end = s.size();
  while (int64_t(rev.size()) < maxsplit) {
    if (end < d.size()) break;
    size_t p = s.rfind(d, end - d.size());
    if (p == std::string::npos) break;
    rev.push_back(Value::string(s.substr(p + d.size(), end - p - d.size())));
    end = p;
  }
  rev.push_back(Value::string(s.substr(0, end)));
  std::reverse(rev.begin(), rev.end());
  return rev;
}

std::string py_replace(const std::string& s, const std::string& old, const std::string& rep, int64_t count, Interp& in) {
  std::string out;
  int64_t done = 0;
  if (old.empty()) {
    auto cps = utf8_decode(s);
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || done < count) {
        out += rep;
        ++done;
      }
      if (i < cps.size()) utf8_append(out, cps[i]);
      in.check_size(out.size());
    }
    return out;
  }
  size_t start = 0;
  while (count < 0 || done < count) {
    size_t p = s.find(old, start);
    if (p == std::string::npos) break;
    out.append(s, start, p - start);
    out += rep;
    in.check_size(out.size());
    start = p + old.size();
    ++done;
  }
  out.append(s, start, std::string::npos);
  return out;
}

std::vector<std::string> py_splitlines(const std::string& s) {
  std::vector<std::string> lines;
  auto cps = utf8_decode(s);
  std::u32string cur;
  for (size_t i = 0; i < cps.size(); ++i) {
    char32_t c = cps[i];
    bool brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E || c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!brk) {
      cur.push_back(c);
      continue;
    }
    if (c == '\r' && i + 1 < cps.size() && cps[i + 1] == '\n') ++i;
    lines.push_back(utf8_encode(cur));
    cur.clear();
  }
  if (!cur.empty()) lines.push_back(utf8_encode(cur));
  return lines;
}

// Python index normalisation for a sequence of length n; returns false when out of range.
bool norm_index(int64_t& i, size_t n) {
  if (i < 0) i += int64_t(n);
  return i >= 0 && i < int64_t(n);
}

// str.format with {} / {0} / {name} fields (no format specs beyond plain conversion).
std::string py_format(const std::string& fmt, const CallArgs& a) {
  std::string out;
  size_t auto_idx = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    char c = fmt[i];
    if (c == '{') {
      if (i + 1 < fmt.size() && fmt[i + 1] == '{') {
        out.push_back('{');
        ++i;
        continue;
      }
      size_t e = fmt.find('}', i);
      if (e == std::string::npos) throw RuntimeError("format: single '{' encountered");
      std::string field = fmt.substr(i + 1, e - i - 1);
      if (field.find_first_of(":!") != std::string::npos) throw RuntimeError("unsupported Jinja construct: format spec in str.format");
      const Value* v = nullptr;
      if (field.empty()) {
        if (auto_idx >= a.pos.size()) throw RuntimeError("format: index out of range");
        v = &a.pos[auto_idx++];
      } else if (isdigit((unsigned char)field[0])) {
        size_t k = std::stoul(field);
        if (k >= a.pos.size()) throw RuntimeError("format: index out of range");
        v = &a.pos[k];
      } else {
        for (auto& [k, kv] : a.kw)
          if (k == field) v = &kv;
        if (!v) throw RuntimeError("format: missing key '" + field + "'");
      }
      out += to_str(*v);
      i = e;
    } else if (c == '}') {
      if (i + 1 < fmt.size() && fmt[i + 1] == '}') ++i;
      out.push_back('}');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

Value string_method(Interp& in, const std::string& s, const std::string& name, CallArgs& a) {
  auto str_list = [](std::vector<Value> v) { return Value::array(std::move(v)); };
  if (name == "upper") return Value::string(upper(s));
  if (name == "lower") return Value::string(lower(s));
  if (name == "title") return Value::string(py_title(s));
  if (name == "capitalize") return Value::string(py_capitalize(s));
  if (name == "swapcase") {
    std::string out;
    for (char32_t c : utf8_decode(s)) {
      auto l = utf8proc_tolower(utf8proc_int32_t(c));
      utf8_append(out, char32_t(l != utf8proc_int32_t(c) ? l : utf8proc_toupper(utf8proc_int32_t(c))));
    }
    return Value::string(out);
  }
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    Args g(a, name.c_str(), {"chars"});
    const Value* chars = g.has(0) ? &g.get(0) : nullptr;
    return Value::string(py_strip(s, chars, name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    Args g(a, name.c_str(), {"sep", "maxsplit"});
    const Value* sep = g.has(0) ? &g.get(0) : nullptr;
    int64_t maxsplit = g.integer(1, -1);
    return str_list(name == "split" ? py_split(s, sep, maxsplit) : py_rsplit(s, sep, maxsplit));
  }
  if (name == "splitlines") {
    std::vector<Value> out;
    for (auto& l : py_splitlines(s)) out.push_back(Value::string(l));
    return str_list(out);
  }
  if (name == "startswith" || name == "endswith") {
    Args g(a, name.c_str(), {"prefix", "start", "end"});
    if (!g.has(0)) throw RuntimeError(name + "() takes at least 1 argument");
    std::u32string cps = utf8_decode(s);
    int64_t n = int64_t(cps.size());
    int64_t st = g.integer(1, 0), en = g.integer(2, n);
    if (st < 0) st = std::max<int64_t>(0, st + n);
    if (en < 0) en = std::max<int64_t>(0, en + n);
    st = std::min(st, n);
    en = std::min(en, n);
    std::string sub = st <= en ? utf8_encode(std::u32string_view(cps).substr(size_t(st), size_t(en - st))) : std::string();
    if (st > en) return Value::boolean(false);
    auto test = [&](const std::string& p) {
      if (p.size() > sub.size()) return false;
      return name == "startswith" ? sub.compare(0, p.size(), p) == 0 : sub.compare(sub.size() - p.size(), p.size(), p) == 0;
    };
    const Value& p = g.get(0);
    if (p.is_array() && p.array_data().is_tuple) {
      for (auto& e : p.items())
        if (test(need_str(e, name.c_str()))) return Value::boolean(true);
      return Value::boolean(false);
    }
    return Value::boolean(test(need_str(p, name.c_str())));
  }
  if (name == "replace") {
    Args g(a, "replace", {"old", "new", "count"});
    return Value::string(py_replace(s, g.str(0), g.str(1), g.integer(2, -1), in));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    Args g(a, name.c_str(), {"sub", "start", "end"});
    std::string sub = g.str(0);
    if (g.has(1) || g.has(2)) throw RuntimeError("unsupported Jinja construct: str." + name + " with start/end");
    if (name == "count") {
      if (sub.empty()) return Value::integer(int64_t(utf8_length(s)) + 1);
      int64_t c = 0;
      for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++c;
      return Value::integer(c);
    }
    size_t p = (name == "find" || name == "index") ? s.find(sub) : s.rfind(sub);
    if (p == std::string::npos) {
      if (name == "index" || name == "rindex") throw RuntimeError("substring not found");
      return Value::integer(-1);
    }
    return Value::integer(int64_t(utf8_length(std::string_view(s).substr(0, p))));
  }
  if (name == "join") {
    Args g(a, "join", {"iterable"});
    std::string out;
    bool first = true;
    for (auto& v : iterate(g.get(0))) {
      if (!first) out += s;
      first = false;
      out += need_str(v, "join");
      in.check_size(out.size());
    }
    return Value::string(out);
  }
  if (name == "format") return Value::string(py_format(s, a));
  if (name == "removeprefix" || name == "removesuffix") {
    Args g(a, name.c_str(), {"affix"});
    std::string p = g.str(0);
    if (name == "removeprefix" && s.compare(0, p.size(), p) == 0) return Value::string(s.substr(p.size()));
    if (name == "removesuffix" && !p.empty() && s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0)
      return Value::string(s.substr(0, s.size() - p.size()));
    return Value::string(s);
  }
  if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" || name == "isupper" || name == "islower" || name == "isnumeric" || name == "isdecimal") {
    auto cps = utf8_decode(s);
    if (cps.empty()) return Value::boolean(false);
    if (name == "isupper" || name == "islower") {
      bool any_cased = false;
      for (char32_t c : cps) {
        if (!is_cased_letter(c)) continue;
        any_cased = true;
        bool is_up = utf8proc_tolower(utf8proc_int32_t(c)) != utf8proc_int32_t(c);
        if (is_up != (name == "isupper")) return Value::boolean(false);
      }
      return Value::boolean(any_cased);
    }
    for (char32_t c : cps) {
      bool ok = name == "isspace" ? is_py_space(c) : name == "isalpha" ? is_alpha(c) : name == "isalnum" ? (is_alpha(c) || is_digit(c)) : is_digit(c);
      if (!ok) return Value::boolean(false);
    }
    return Value::boolean(true);
  }
  if (name == "center" || name == "ljust" || name == "rjust" || name == "zfill") {
    Args g(a, name.c_str(), {"width", "fillchar"});
    int64_t w = g.integer(0, 0);
    std::string fill = g.str(1, name == "zfill" ? "0" : " ");
    int64_t len = int64_t(utf8_length(s));
    if (w <= len) return Value::string(s);
    in.check_size(size_t(w) * fill.size());
    int64_t pad = w - len;
    auto rep = [&](int64_t k) {
      std::string r;
      for (int64_t i = 0; i < k; ++i) r += fill;
      return r;
    };
    if (name == "ljust") return Value::string(s + rep(pad));
    if (name == "rjust" || name == "zfill") return Value::string(rep(pad) + s);
    int64_t left = pad / 2 + (pad & w & 1);
    return Value::string(rep(left) + s + rep(pad - left));
  }
  throw RuntimeError("'str' object has no attribute '" + name + "'");
}

bool is_string_method(const std::string& n) {
  static const std::set<std::string> m = {"upper", "lower", "title", "capitalize", "swapcase", "strip", "lstrip", "rstrip",
                                          "split", "rsplit", "splitlines", "startswith", "endswith", "replace", "find",
                                          "rfind", "index", "rindex", "count", "join", "format", "removeprefix",
                                          "removesuffix", "isdigit", "isalpha", "isalnum", "isspace", "isupper",
                                          "islower", "isnumeric", "isdecimal", "center", "ljust", "rjust", "zfill"};
  return m.count(n) > 0;
}

Value items_of(const Value& obj) {
  std::vector<Value> out;
  for (auto& [k, v] : obj.obj().items) out.push_back(Value::array({Value::string(k), v}, true));
  return Value::array(std::move(out));
}

Value dict_method(const Value& obj, const std::string& name, CallArgs& a) {
  if (name == "items") {
    Args g(a, "items", {});
    return items_of(obj);
  }
  if (name == "keys" || name == "values") {
    Args g(a, name.c_str(), {});
    std::vector<Value> out;
    for (auto& [k, v] : obj.obj().items) out.push_back(name == "keys" ? Value::string(k) : v);
    return Value::array(std::move(out));
  }
  if (name == "get") {
    Args g(a, "get", {"key", "default"});
    if (!g.has(0)) throw RuntimeError("get expected at least 1 argument");
    if (g.get(0).is_string())
      if (const Value* v = obj.obj().find(g.get(0).str())) return *v;
    return g.get_or(1, Value::none());
  }
  if (name == "copy") return Value::object(std::make_shared<ObjectData>(obj.obj()));
  throw RuntimeError("access to attribute '" + name + "' of 'dict' object is unsafe");
}

bool is_dict_method(const std::string& n) {
  static const std::set<std::string> m = {"items", "keys", "values", "get", "copy", "pop", "popitem", "update", "setdefault", "clear", "fromkeys"};
  return m.count(n) > 0;
}

Value list_method(const Value& obj, const std::string& name, CallArgs& a) {
  if (name == "index" || name == "count") {
    Args g(a, name.c_str(), {"value"});
    int64_t c = 0;
    for (size_t i = 0; i < obj.items().size(); ++i) {
      if (!equals(obj.items()[i], g.get(0))) continue;
      if (name == "index") return Value::integer(int64_t(i));
      ++c;
    }
    if (name == "index") throw RuntimeError(repr(g.get(0)) + " is not in list");
    return Value::integer(c);
  }
  throw RuntimeError("access to attribute '" + name + "' of '" + obj.type_name() + "' object is unsafe");
}

bool is_list_method(const std::string& n) {
  static const std::set<std::string> m = {"index", "count", "append", "extend", "insert", "pop", "remove", "reverse", "sort", "clear", "copy"};
  return m.count(n) > 0;
}

Value bound_method(const Value& obj, const std::string& name) {
  return make_fn(obj.type_name() + "." + name, [obj, name](Interp& in, CallArgs& a) -> Value {
    if (obj.is_string()) return string_method(in, obj.str(), name, a);
    if (obj.is_object()) return dict_method(obj, name, a);
    return list_method(obj, name, a);
  });
}

// Sort key comparison used by sort/unique/min/max/dictsort: case-insensitive on strings by default.
Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value::string(lower(v.str()));
  return v;
}

int cmp_values(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    double x = a.as_double(), y = b.as_double();
    return x < y ? -1 : x > y;
  }
  if (a.is_string() && b.is_string()) {
    int c = a.str().compare(b.str());
    return c < 0 ? -1 : c > 0;
  }
  if (a.is_array() && b.is_array()) {
    for (size_t i = 0; i < a.items().size() && i < b.items().size(); ++i) {
      int c = cmp_values(a.items()[i], b.items()[i]);
      if (c) return c;
    }
    return a.items().size() < b.items().size() ? -1 : a.items().size() > b.items().size();
  }
  if (a.is_undefined() || b.is_undefined()) fail_undefined(a.is_undefined() ? a : b);
  throw RuntimeError("'<' not supported between instances of '" + a.type_name() + "' and '" + b.type_name() + "'");
}

// Resolves "a.b.0"-style attribute paths as jinja2's make_attrgetter does.
Value attr_path(Interp& in, const Value& v, const std::string& path) {
  Value cur = v;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (cur.is_undefined()) fail_undefined(cur);
    if (!part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return isdigit((unsigned char)c); }))
      cur = get_item(in, cur, Value::integer(std::stoll(part)));
    else
      cur = get_item(in, cur, Value::string(part));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return cur;
}

Value round_value(const Value& v, int64_t precision, const std::string& method) {
  double x = v.as_double();
  if (method == "common") {
    if (v.is_int() || v.is_bool()) return Value::integer(v.get_int());
    char buf[512];
    if (precision < 0 || precision > 300) return Value::number(x);
    std::snprintf(buf, sizeof buf, "%.*f", int(precision), x);  // correctly rounded, ties-to-even on exact binary
    return Value::number(std::strtod(buf, nullptr));
  }
  double m = std::pow(10.0, double(precision));
  if (method == "ceil") return Value::number(std::ceil(x * m) / m);
  if (method == "floor") return Value::number(std::floor(x * m) / m);
  throw RuntimeError("method must be common, ceil or floor");
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

std::string py_int_string(const std::string& s) {
  std::string t = py_strip(s, nullptr, true, true);
  std::string out;
  for (char c : t)
    if (c != '_') out.push_back(c);
  return out;
}

Value to_int(const Value& v, const Value& dflt, int base) {
  if (v.is_int()) return v;
  if (v.is_bool()) return Value::integer(v.get_int());
  if (v.is_float()) {
    double d = v.as_double();
    if (!std::isfinite(d) || std::fabs(d) > 9.2e18) return dflt;
    return Value::integer(int64_t(d));
  }
  if (v.is_string()) {
    std::string s = py_int_string(v.str());
    if (s.empty()) return dflt;
    errno = 0;
    char* end = nullptr;
    long long r = std::strtoll(s.c_str(), &end, base);
    if (errno == 0 && end && *end == 0) return Value::integer(r);
    char* fend = nullptr;
    double d = std::strtod(s.c_str(), &fend);
    if (fend && *fend == 0 && std::isfinite(d) && std::fabs(d) < 9.2e18) return Value::integer(int64_t(d));
    return dflt;
  }
  return dflt;
}

using FilterFn = std::function<Value(Interp&, const Value&, CallArgs&)>;
using TestFn = std::function<bool(Interp&, const Value&, CallArgs&)>;

std::vector<Value> select_items(Interp& in, const Value& seq, CallArgs& a, bool by_attr, bool select) {
  std::vector<Value> out;
  size_t skip = by_attr ? 1 : 0;
  std::string attr;
  if (by_attr) {
    if (a.pos.empty()) throw RuntimeError("missing attribute name");
    attr = need_str(a.pos[0], "selectattr");
  }
  std::string test;
  CallArgs targs;
  if (a.pos.size() > skip) {
    test = need_str(a.pos[skip], "select");
    targs.pos.assign(a.pos.begin() + long(skip) + 1, a.pos.end());
    targs.kw = a.kw;
  }
  for (auto& item : iterate(seq)) {
    in.step();
    Value v = by_attr ? attr_path(in, item, attr) : item;
    bool ok = test.empty() ? v.truthy() : in.call_test(test, v, targs);
    if (ok == select) out.push_back(item);
  }
  return out;
}

const std::map<std::string, FilterFn>& filters() {
  static const std::map<std::string, FilterFn> f = [] {
    std::map<std::string, FilterFn> m;
    m["abs"] = [](Interp&, const Value& v, CallArgs&) {
      if (v.is_float()) return Value::number(std::fabs(v.as_double()));
      if (v.is_int() || v.is_bool()) {
        if (v.get_int() == INT64_MIN) throw RuntimeError("integer overflow");
        return Value::integer(std::llabs(v.get_int()));
      }
      throw RuntimeError("bad operand type for abs(): '" + v.type_name() + "'");
    };
    m["attr"] = [](Interp& in, const Value& v, CallArgs& a) {
      Args g(a, "attr", {"name"});
      return get_attr(in, v, g.str(0));
    };
    m["capitalize"] = [](Interp&, const Value& v, CallArgs&) { return Value::string(py_capitalize(to_str(v))); };
    m["center"] = [](Interp& in, const Value& v, CallArgs& a) {
      Args g(a, "center", {"width"});
      CallArgs b;
      b.pos.push_back(Value::integer(g.integer(0, 80)));
      return string_method(in, to_str(v), "center", b);
    };
    m["default"] = [](Interp&, const Value& v, CallArgs& a) {
      Args g(a, "default", {"default_value", "boolean"});
      bool use = g.boolean(1, false) ? !v.truthy() : v.is_undefined();
      return use ? g.get_or(0, Value::string("")) : v;
    };
    m["d"] = m["default"];
    m["dictsort"] = [](Interp&, const Value& v, CallArgs& a) {
      Args g(a, "dictsort", {"case_sensitive", "by", "reverse"});
      if (!v.is_object()) throw RuntimeError("dictsort: expected a mapping");
      bool cs = g.boolean(0, false), rev = g.boolean(2, false);
      int pos = g.str(1, "key") == "value" ? 1 : 0;
      std::vector<Value> items = items_of(v).items();
      std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
        int c = cmp_values(sort_key(x.items()[pos], cs), sort_key(y.items()[pos], cs));
        return rev ? c > 0 : c < 0;
      });
      return Value::array(std::move(items));
    };
    m["escape"] = [](Interp&, const Value& v, CallArgs&) { return Value::string(html_escape(to_str(v))); };
    m["e"] = m["escape"];
    m["forceescape"] = m["escape"];
    m["first"] = [](Interp&, const Value& v, CallArgs&) {
      auto items = iterate(v);
      return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
    };
    m["last"] = [](Interp&, const Value& v, CallArgs&) {
      auto items = iterate(v);
      return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
    };
    m["float"] = [](Interp&, const Value& v, CallArgs& a) {
      Args g(a, "float", {"default"});
      Value d = g.get_or(0, Value::number(0.0));
      if (v.is_number()) return Value::number(v.as_double());
      if (v.is_string()) {
        std::string s = py_int_string(v.str());
        char* end = nullptr;
        double r = std::strtod(s.c_str(), &end);
        if (!s.empty() && end && *end == 0) return Value::number(r);
      }
      return d;
    };
    m["int"] = [](Interp&, const Value& v, CallArgs& a) {
      Args g(a, "int", {"default", "base"});
      return to_int(v, g.get_or(0, Value::integer(0)), int(g.integer(1, 10)));
    };
    m["format"] = [](Interp&, const Value& v, CallArgs& a) {
      if (!a.kw.empty()) throw RuntimeError("unsupported Jinja construct: format filter with keyword arguments");
      return Value::string(percent_format(to_str(v), Value::array(a.pos, true)));
    };
    m["indent"] = [](Interp&, const Value& v, CallArgs& a) {
      Args g(a, "indent", {"width", "first", "blank"});
      std::string ind = g.has(0) && g.get(0).is_string() ? g.get(0).str() : std::string(size_t(std::max<int64_t>(0, g.integer(0, 4))), ' ');
      bool first = g.boolean(1, false), blank = g.boolean(2, false);
      std::string s = to_str(v) + "\n";
      auto lines = py_splitlines(s);
      std::string rv;
      if (blank) {
        for (size_t i = 0; i < lines.size(); ++i) rv += (i ? "\n" + ind : "") + lines[i];
      } else {
        rv = lines.empty() ? "" : lines[0];
        for (size_t i = 1; i < lines.size(); ++i) rv += "\n" + (lines[i].empty() ? "" : ind + lines[i]);
      }
      if (first) rv = ind + rv;
      return Value::string(rv);
    };
    m["items"] = [](Interp&, const Value& v, CallArgs&) {
      if (v.is_undefined()) return Value::array();
      if (!v.is_object()) throw RuntimeError("items: can only get item pairs from a mapping");
      return items_of(v);
    };
    m["join"] = [](Interp& in, const Value& v, CallArgs& a) {
      Args g(a, "join", {"d", "attribute"});
      std::string sep = g.has(0) ? to_str(g.get(0)) : "";
      std::string out;
      bool first = true;
      for (auto& item : iterate(v)) {
        if (!first) out += sep;
        first = false;
        out += to_str(g.has(1) ? attr_path(in, item, to_str(g.get(1))) : item);
        in.check_size(out.size());
      }
      return Value::string(out);
    };
    m["length"] = [](Interp&, const Value& v, CallArgs&) {
      if (v.is_string()) return Value::integer(int64_t(utf8_length(v.str())));
      if (v.is_array()) return Value::integer(int64_t(v.items().size()));
      if (v.is_object()) return Value::integer(int64_t(v.obj().items.size()));
      if (v.is_undefined()) return Value::integer(0);
      throw RuntimeError("object of type '" + v.type_name() + "' has no len()");
    };
    m["count"] = m["length"];
    m["list"] = [](Interp&, const Value& v, CallArgs&) { return Value::array(iterate(v)); };
    m["lower"] = [](Interp&, const Value& v, CallArgs&) { return Value::string(lower(to_str(v))); };
    m["upper"] = [](Interp&, const Value& v, CallArgs&) { return Value::string(upper(to_str(v))); };
    m["map"] = [](Interp& in, const Value& v, CallArgs& a) {
      std::vector<Value> out;
      Value attribute, dflt;
      bool has_attr = false, has_default = false;
      CallArgs fargs;
      for (auto& [k, kv] : a.kw) {
        if (k == "attribute") {
          attribute = kv;
          has_attr = true;
        } else if (k == "default") {
          dflt = kv;
          has_default = true;
        } else {
          fargs.kw.emplace_back(k, kv);
        }
      }
      if (has_attr) {
        for (auto& item : iterate(v)) {
          Value r = attr_path(in, item, to_str(attribute));
          if (r.is_undefined() && has_default) r = dflt;
          out.push_back(r);
        }
        return Value::array(std::move(out));
      }
      if (a.pos.empty()) throw RuntimeError("map requires a filter argument");
      std::string fname = need_str(a.pos[0], "map");
      if (!is_known_filter(fname)) throw RuntimeError("unsupported Jinja construct: no filter named '" + fname + "'");
      fargs.pos.assign(a.pos.begin() + 1, a.pos.end());
      for (auto& item : iterate(v)) {
        in.step();
        CallArgs c = fargs;
        out.push_back(in.call_filter(fname, item, c));
      }
      return Value::array(std::move(out));
    };
    auto minmax = [](bool is_max) {
      return [is_max](Interp& in, const Value& v, CallArgs& a) {
        Args g(a, is_max ? "max" : "min", {"case_sensitive", "attribute"});
        bool cs = g.boolean(0, false);
        auto items = iterate(v);
        if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
        size_t best = 0;
        for (size_t i = 1; i < items.size(); ++i) {
          Value x = g.has(1) ? attr_path(in, items[i], to_str(g.get(1))) : items[i];
          Value y = g.has(1) ? attr_path(in, items[best], to_str(g.get(1))) : items[best];
          int c = cmp_values(sort_key(x, cs), sort_key(y, cs));
          if (is_max ? c > 0 : c < 0) best = i;
        }
        return items[best];
      };
    };
    m["max"] = minmax(true);
    m["min"] = minmax(false);
    m["pprint"] = [](Interp&, const Value& v, CallArgs&) { return Value::string(repr(v)); };
    m["reject"] = [](Interp& in, const Value& v, CallArgs& a) { return Value::array(select_items(in, v, a, false, false)); };
    m["select"] = [](Interp& in, const Value& v, CallArgs& a) { return Value::array(select_items(in, v, a, false, true)); };
    m["rejectattr"] = [](Interp& in, const Value& v, CallArgs& a) { return Value::array(select_items(in, v, a, true, false)); };
    m["selectattr"] = [](Interp& in, const Value& v, CallArgs& a) { return Value::array(select_items(in, v, a, true, true)); };
    m["replace"] = [](Interp& in, const Value& v, CallArgs& a) {
      Args g(a, "replace", {"old", "new", "count"});
      return Value::string(py_replace(to_str(v), to_str(g.get(0)), to_str(g.get(1)), g.integer(2, -1), in));
    };
    m["reverse"] = [](Interp&, const Value& v, CallArgs&) {
      if (v.is_string()) {
        auto cps = utf8_decode(v.str());
        std::reverse(cps.begin(), cps.end());
        return Value::string(utf8_encode(cps));
      }
      auto items = iterate(v);
      std::reverse(items.begin(), items.end());
      return Value::array(std::move(items));
    };
    m["round"] = [](Interp&, const Value& v, CallArgs& a) {
      Args g(a, "round", {"precision", "method"});
      if (!v.is_number()) throw RuntimeError("round: expected a number, got '" + v.type_name() + "'");
      int64_t p = g.integer(0, 0);
      std::string method = g.str(1, "common");
      Value r = round_value(v, p, method);
      if (r.is_int()) return r;
      return Value::number(r.as_double());
    };
    m["safe"] = [](Interp&, const Value& v, CallArgs&) { return v.is_string() ? v : Value::string(to_str(v)); };
    m["sort"] = [](Interp& in, const Value& v, CallArgs& a) {
      Args g(a, "sort", {"reverse", "case_sensitive", "attribute"});
      bool rev = g.boolean(0, false), cs = g.boolean(1, false);
      auto items = iterate(v);
      std::string attr = g.has(2) ? to_str(g.get(2)) : "";
      std::vector<std::pair<Value, Value>> keyed;
      for (auto& it : items) keyed.emplace_back(sort_key(attr.empty() ? it : attr_path(in, it, attr), cs), it);
      std::stable_sort(keyed.begin(), keyed.end(), [&](auto& x, auto& y) {
        int c = cmp_values(x.first, y.first);
        return rev ? c > 0 : c < 0;
      });
      std::vector<Value> out;
      for (auto& k : keyed) out.push_back(k.second);
      return Value::array(std::move(out));
    };
    m["string"] = [](Interp&, const Value& v, CallArgs&) { return Value::string(to_str(v)); };
    m["sum"] = [](Interp& in, const Value& v, CallArgs& a) {
      Args g(a, "sum", {"attribute", "start"});
      Value total = g.get_or(1, Value::integer(0));
      for (auto& it : iterate(v)) {
        Value x = g.has(0) ? attr_path(in, it, to_str(g.get(0))) : it;
        if (!x.is_number() || !total.is_number()) throw RuntimeError("unsupported operand type(s) for +: '" + total.type_name() + "' and '" + x.type_name() + "'");
        if ((x.is_int() || x.is_bool()) && (total.is_int() || total.is_bool())) {
          int64_t r;
          if (__builtin_add_overflow(total.get_int(), x.get_int(), &r)) throw RuntimeError("integer overflow");
          total = Value::integer(r);
        } else {
          total = Value::number(total.as_double() + x.as_double());
        }
      }
      return total;
    };
    m["title"] = [](Interp&, const Value& v, CallArgs&) {
      // jinja2's do_title: capitalise each word split on whitespace, '-', and brackets.
      auto cps = utf8_decode(to_str(v));
      std::string out;
      bool word_start = true;
      for (char32_t c : cps) {
        bool sep = is_py_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
        if (sep) {
          utf8_append(out, c);
          word_start = true;
          continue;
        }
        utf8_append(out, char32_t(word_start ? utf8proc_toupper(utf8proc_int32_t(c)) : utf8proc_tolower(utf8proc_int32_t(c))));
        word_start = false;
      }
      return Value::string(out);
    };
    m["tojson"] = [](Interp& in, const Value& v, CallArgs& a) {
      Args g(a, "tojson", {"ensure_ascii", "indent", "separators", "sort_keys"});
      bool ascii = g.boolean(0, false);
      int indent = -1;
      std::string indent_str;
      if (g.has(1) && !g.get(1).is_none()) {
        if (g.get(1).is_string()) {
          indent = 1;
          indent_str = g.get(1).str();
        } else {
          indent = int(std::clamp<int64_t>(g.integer(1, 0), 0, 1024));
          indent_str = std::string(size_t(indent), ' ');
        }
      }
      std::string item_sep = indent >= 0 ? "," : ", ", key_sep = ": ";
      if (g.has(2) && !g.get(2).is_none()) {
        auto seps = iterate(g.get(2));
        if (seps.size() != 2) throw RuntimeError("tojson: separators must be a pair of strings");
        item_sep = need_str(seps[0], "tojson");
        key_sep = need_str(seps[1], "tojson");
      }
      std::string s = to_json(v, indent, indent_str, ascii, item_sep, key_sep, g.boolean(3, false));
      in.check_size(s.size());
      return Value::string(std::move(s));
    };
    m["trim"] = [](Interp&, const Value& v, CallArgs& a) {
      Args g(a, "trim", {"chars"});
      const Value* chars = g.has(0) ? &g.get(0) : nullptr;
      return Value::string(py_strip(to_str(v), chars, true, true));
    };
    m["truncate"] = [](Interp&, const Value& v, CallArgs& a) {
      Args g(a, "truncate", {"length", "killwords", "end", "leeway"});
      auto cps = utf8_decode(to_str(v));
      int64_t length = g.integer(0, 255), leeway = g.integer(3, 5);
      std::u32string end = utf8_decode(g.str(2, "..."));
      if (int64_t(cps.size()) <= length + leeway) return Value::string(to_str(v));
      int64_t keep = std::max<int64_t>(0, length - int64_t(end.size()));
      std::u32string r = cps.substr(0, size_t(keep));
      if (!g.boolean(1, false)) {
        size_t sp = r.rfind(U' ');
        if (sp != std::u32string::npos) r = r.substr(0, sp);
      }
      return Value::string(utf8_encode(r + end));
    };
    m["unique"] = [](Interp& in, const Value& v, CallArgs& a) {
      Args g(a, "unique", {"case_sensitive", "attribute"});
      bool cs = g.boolean(0, false);
      std::vector<Value> out, seen;
      for (auto& it : iterate(v)) {
        Value k = sort_key(g.has(1) ? attr_path(in, it, to_str(g.get(1))) : it, cs);
        bool dup = false;
        for (auto& s : seen) dup = dup || equals(s, k);
        if (dup) continue;
        seen.push_back(k);
        out.push_back(it);
      }
      return Value::array(std::move(out));
    };
    m["wordcount"] = [](Interp&, const Value& v, CallArgs&) {
      int64_t n = 0;
      bool in_word = false;
      for (char32_t c : utf8_decode(to_str(v))) {
        bool w = is_word(c);
        if (w && !in_word) ++n;
        in_word = w;
      }
      return Value::integer(n);
    };
    m["batch"] = [](Interp&, const Value& v, CallArgs& a) {
      Args g(a, "batch", {"linecount", "fill_with"});
      int64_t n = g.integer(0, 1);
      if (n <= 0) throw RuntimeError("batch: linecount must be positive");
      std::vector<Value> out, cur;
      for (auto& it : iterate(v)) {
        cur.push_back(it);
        if (int64_t(cur.size()) == n) {
          out.push_back(Value::array(std::move(cur)));
          cur.clear();
        }
      }
      if (!cur.empty()) {
        if (g.has(1))
          while (int64_t(cur.size()) < n) cur.push_back(g.get(1));
        out.push_back(Value::array(std::move(cur)));
      }
      return Value::array(std::move(out));
    };
    return m;
  }();
  return f;
}

bool number_test(const Value& v) { return v.is_number(); }

const std::map<std::string, TestFn>& tests() {
  static const std::map<std::string, TestFn> t = [] {
    std::map<std::string, TestFn> m;
    auto arg0 = [](CallArgs& a, const char* name) -> const Value& {
      if (a.pos.empty()) throw RuntimeError(std::string("test '") + name + "' needs an argument");
      return a.pos[0];
    };
    m["defined"] = [](Interp&, const Value& v, CallArgs&) { return !v.is_undefined(); };
    m["undefined"] = [](Interp&, const Value& v, CallArgs&) { return v.is_undefined(); };
    m["none"] = [](Interp&, const Value& v, CallArgs&) { return v.is_none(); };
    m["boolean"] = [](Interp&, const Value& v, CallArgs&) { return v.is_bool(); };
    m["true"] = [](Interp&, const Value& v, CallArgs&) { return v.is_bool() && v.get_bool(); };
    m["false"] = [](Interp&, const Value& v, CallArgs&) { return v.is_bool() && !v.get_bool(); };
    m["integer"] = [](Interp&, const Value& v, CallArgs&) { return v.is_int(); };
    m["float"] = [](Interp&, const Value& v, CallArgs&) { return v.is_float(); };
    m["number"] = [](Interp&, const Value& v, CallArgs&) { return number_test(v); };
    m["string"] = [](Interp&, const Value& v, CallArgs&) { return v.is_string(); };
    m["mapping"] = [](Interp&, const Value& v, CallArgs&) { return v.is_object() && !v.obj().is_namespace; };
    m["iterable"] = [](Interp&, const Value& v, CallArgs&) { return v.is_undefined() || v.is_string() || v.is_array() || v.is_object(); };
    m["sequence"] = [](Interp&, const Value& v, CallArgs&) { return v.is_undefined() || v.is_string() || v.is_array() || (v.is_object() && !v.obj().is_namespace); };
    m["callable"] = [](Interp&, const Value& v, CallArgs&) { return v.is_callable(); };
    m["odd"] = [](Interp&, const Value& v, CallArgs&) {
      if (!(v.is_int() || v.is_bool())) throw RuntimeError("odd: expected an integer");
      return (v.get_int() % 2) != 0;
    };
    m["even"] = [](Interp&, const Value& v, CallArgs&) {
      if (!(v.is_int() || v.is_bool())) throw RuntimeError("even: expected an integer");
      return (v.get_int() % 2) == 0;
    };
    m["divisibleby"] = [arg0](Interp&, const Value& v, CallArgs& a) {
      const Value& d = arg0(a, "divisibleby");
      if (!(v.is_int() || v.is_bool()) || !(d.is_int() || d.is_bool())) throw RuntimeError("divisibleby: expected integers");
      if (d.get_int() == 0) throw RuntimeError("integer division or modulo by zero");
      return d.get_int() == -1 || v.get_int() % d.get_int() == 0;
    };
    m["eq"] = [arg0](Interp&, const Value& v, CallArgs& a) { return equals(v, arg0(a, "eq")); };
    m["equalto"] = m["eq"];
    m["=="] = m["eq"];
    m["ne"] = [arg0](Interp&, const Value& v, CallArgs& a) { return !equals(v, arg0(a, "ne")); };
    m["!="] = m["ne"];
    auto ord = [arg0](const char* op) {
      return [arg0, op](Interp& in, const Value& v, CallArgs& a) {
        return in.compare(op, v, arg0(a, op));
      };
    };
    m["lt"] = ord("<");
    m["lessthan"] = m["lt"];
    m["<"] = m["lt"];
    m["le"] = ord("<=");
    m["<="] = m["le"];
    m["gt"] = ord(">");
    m["greaterthan"] = m["gt"];
    m[">"] = m["gt"];
    m["ge"] = ord(">=");
    m[">="] = m["ge"];
    m["in"] = [arg0](Interp&, const Value& v, CallArgs& a) { return contains(arg0(a, "in"), v); };
    m["sameas"] = [arg0](Interp&, const Value& v, CallArgs& a) {
      const Value& o = arg0(a, "sameas");
      if (v.kind() != o.kind()) return false;
      if (v.is_none() || v.is_undefined()) return true;
      if (v.is_bool()) return v.get_bool() == o.get_bool();
      if (v.is_object()) return v.obj_ptr() == o.obj_ptr();
      return equals(v, o);
    };
    m["lower"] = [](Interp&, const Value& v, CallArgs&) {
      std::string s = to_str(v);
      return lower(s) == s && upper(s) != s;
    };
    m["upper"] = [](Interp&, const Value& v, CallArgs&) {
      std::string s = to_str(v);
      return upper(s) == s && lower(s) != s;
    };
    m["escaped"] = [](Interp&, const Value&, CallArgs&) { return false; };
    m["filter"] = [arg0](Interp&, const Value& v, CallArgs&) { return v.is_string() && is_known_filter(v.str()); };
    m["test"] = [arg0](Interp&, const Value& v, CallArgs&) { return v.is_string() && is_known_test(v.str()); };
    return m;
  }();
  return t;
}

}  // namespace

bool is_known_filter(const std::string& name) { return filters().count(name) > 0 && name != "__percent__"; }
bool is_known_test(const std::string& name) { return tests().count(name) > 0; }

Value builtin_filter(Interp& in, const std::string& name, const Value& input, CallArgs& args) {
  auto it = filters().find(name);
  if (it == filters().end()) throw RuntimeError("unsupported Jinja construct: no filter named '" + name + "'");
  return it->second(in, input, args);
}

bool builtin_test(Interp& in, const std::string& name, const Value& v, CallArgs& args) {
  auto it = tests().find(name);
  if (it == tests().end()) throw RuntimeError("unsupported Jinja construct: no test named '" + name + "'");
  return it->second(in, v, args);
}

// ---------------------------------------------------------------------------------------
// Access
// ---------------------------------------------------------------------------------------

Value get_attr(Interp& in, const Value& obj, const std::string& name) {
  (void)in;
  switch (obj.kind()) {
    case Kind::Undefined: fail_undefined(obj);
    case Kind::Object:
      if (!obj.obj().is_namespace && is_dict_method(name)) return bound_method(obj, name);
      if (const Value* v = obj.obj().find(name)) return *v;
      return Value::undefined("'" + obj.type_name() + " object' has no attribute '" + name + "'");
    case Kind::String:
      if (is_string_method(name)) return bound_method(obj, name);
      break;
    case Kind::Array:
      if (is_list_method(name)) return bound_method(obj, name);
      break;
    default: break;
  }
  return Value::undefined("'" + obj.type_name() + " object' has no attribute '" + name + "'");
}

Value get_item(Interp& in, const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Kind::Undefined: fail_undefined(obj);
    case Kind::Object:
      if (key.is_string()) {
        if (const Value* v = obj.obj().find(key.str())) return *v;
        if (!obj.obj().is_namespace && is_dict_method(key.str())) return bound_method(obj, key.str());
      }
      return Value::undefined("'" + obj.type_name() + " object' has no attribute " + repr(key));
    case Kind::Array:
      if (key.is_int() || key.is_bool()) {
        int64_t i = key.get_int();
        if (norm_index(i, obj.items().size())) return obj.items()[size_t(i)];
        return Value::undefined("'" + obj.type_name() + " object' has no element " + std::to_string(key.get_int()));
      }
      if (key.is_string()) return get_attr(in, obj, key.str());
      break;
    case Kind::String:
      if (key.is_int() || key.is_bool()) {
        int64_t i = key.get_int();
        if (is_ascii(obj.str())) {
          if (norm_index(i, obj.str().size())) return Value::string(std::string(1, obj.str()[size_t(i)]));
        } else {
          auto cps = utf8_decode(obj.str());
          if (norm_index(i, cps.size())) return Value::string(utf8_encode(std::u32string(1, cps[size_t(i)])));
        }
        return Value::undefined("'str object' has no element " + std::to_string(key.get_int()));
      }
      if (key.is_string()) return get_attr(in, obj, key.str());
      break;
    default: break;
  }
  return Value::undefined("'" + obj.type_name() + " object' has no attribute " + repr(key));
}

Value slice_value(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  auto idx = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_none()) return std::nullopt;
    if (v.is_int() || v.is_bool()) return v.get_int();
    throw RuntimeError(std::string("slice ") + what + " must be an integer or None");
  };
  int64_t st = idx(step, "step").value_or(1);
  if (st == 0) throw RuntimeError("slice step cannot be zero");
  auto b = idx(start, "start"), e = idx(stop, "stop");
  auto pick = [&](int64_t n, std::vector<int64_t>& out) {
    int64_t lo, hi;
    auto clampi = [&](int64_t x, int64_t low, int64_t high) { return std::max(low, std::min(high, x)); };
    if (st > 0) {
      lo = b ? clampi(*b < 0 ? *b + n : *b, 0, n) : 0;
      hi = e ? clampi(*e < 0 ? *e + n : *e, 0, n) : n;
      for (int64_t i = lo; i < hi; i += st) out.push_back(i);
    } else {
      lo = b ? clampi(*b < 0 ? *b + n : *b, -1, n - 1) : n - 1;
      hi = e ? clampi(*e < 0 ? *e + n : *e, -1, n - 1) : -1;
      for (int64_t i = lo; i > hi; i += st) out.push_back(i);
    }
  };
  std::vector<int64_t> ids;
  if (obj.is_string()) {
    auto cps = utf8_decode(obj.str());
    pick(int64_t(cps.size()), ids);
    std::u32string r;
    for (auto i : ids) r.push_back(cps[size_t(i)]);
    return Value::string(utf8_encode(r));
  }
  if (obj.is_array()) {
    pick(int64_t(obj.items().size()), ids);
    std::vector<Value> r;
    for (auto i : ids) r.push_back(obj.items()[size_t(i)]);
    return Value::array(std::move(r), obj.array_data().is_tuple);
  }
  throw RuntimeError("'" + obj.type_name() + "' object is not subscriptable");
}

std::vector<Value> iterate(const Value& v) {
  switch (v.kind()) {
    case Kind::Undefined: return {};
    case Kind::Array: return v.items();
    case Kind::String: {
      std::vector<Value> out;
      for (char32_t c : utf8_decode(v.str())) out.push_back(Value::string(utf8_encode(std::u32string(1, c))));
      return out;
    }
    case Kind::Object: {
      if (v.obj().is_namespace) break;
      std::vector<Value> out;
      for (auto& [k, x] : v.obj().items) out.push_back(Value::string(k));
      return out;
    }
    default: break;
  }
  throw RuntimeError("'" + v.type_name() + "' object is not iterable");
}

bool contains(const Value& c, const Value& item) {
  switch (c.kind()) {
    case Kind::Undefined: return false;
    case Kind::String:
      if (!item.is_string()) throw RuntimeError("'in <string>' requires string as left operand, not " + item.type_name());
      return c.str().find(item.str()) != std::string::npos;
    case Kind::Array:
      for (auto& e : c.items())
        if (equals(e, item)) return true;
      return false;
    case Kind::Object:
      if (c.obj().is_namespace) break;
      return item.is_string() && c.obj().find(item.str()) != nullptr;
    default: break;
  }
  throw RuntimeError("argument of type '" + c.type_name() + "' is not iterable");
}

// ---------------------------------------------------------------------------------------
// Globals
// ---------------------------------------------------------------------------------------

void add_globals(Scope& s) {
  s.vars["raise_exception"] = make_fn("raise_exception", [](Interp&, CallArgs& a) -> Value {
    std::string msg = a.pos.empty() ? "" : to_str(a.pos[0]);
    throw TemplateRaised("raise_exception", msg);
  });
  s.vars["strftime_now"] = make_fn("strftime_now", [](Interp& in, CallArgs& a) -> Value {
    Args g(a, "strftime_now", {"format"});
    std::string fmt = g.str(0);
    std::time_t t = in.now();
    std::tm tm{};
    localtime_r(&t, &tm);
    std::string out(256 + fmt.size() * 8, '\0');
    size_t n = fmt.empty() ? 0 : std::strftime(out.data(), out.size(), fmt.c_str(), &tm);
    out.resize(n);
    return Value::string(out);
  });
  s.vars["namespace"] = make_fn("namespace", [](Interp& in, CallArgs& a) -> Value {
    auto o = std::make_shared<ObjectData>();
    o->is_namespace = true;
    in.track(o);
    for (auto& p : a.pos) {
      if (!p.is_object()) throw RuntimeError("namespace() positional argument must be a mapping");
      for (auto& [k, v] : p.obj().items) o->set(k, v);
    }
    for (auto& [k, v] : a.kw) o->set(k, v);
    return Value::object(o);
  });
  s.vars["dict"] = make_fn("dict", [](Interp&, CallArgs& a) -> Value {
    auto o = std::make_shared<ObjectData>();
    for (auto& p : a.pos) {
      if (!p.is_object()) throw RuntimeError("dict() positional argument must be a mapping");
      for (auto& [k, v] : p.obj().items) o->set(k, v);
    }
    for (auto& [k, v] : a.kw) o->set(k, v);
    return Value::object(o);
  });
  s.vars["range"] = make_fn("range", [](Interp& in, CallArgs& a) -> Value {
    if (!a.kw.empty() || a.pos.empty() || a.pos.size() > 3) throw RuntimeError("range expected 1 to 3 integer arguments");
    for (auto& p : a.pos)
      if (!(p.is_int() || p.is_bool())) throw RuntimeError("range: '" + p.type_name() + "' object cannot be interpreted as an integer");
    int64_t start = 0, stop, step = 1;
    if (a.pos.size() == 1) stop = a.pos[0].get_int();
    else {
      start = a.pos[0].get_int();
      stop = a.pos[1].get_int();
      if (a.pos.size() == 3) step = a.pos[2].get_int();
    }
    if (step == 0) throw RuntimeError("range() arg 3 must not be zero");
    // jinja2's sandbox refuses ranges longer than 100000 (MAX_RANGE).
    long double count = step > 0 ? (stop > start ? std::ceil((long double)(stop - start) / step) : 0)
                                  : (stop < start ? std::ceil((long double)(start - stop) / -step) : 0);
    if (count > 100000) throw RuntimeError("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    std::vector<Value> out;
    for (int64_t i = 0; i < int64_t(count); ++i) out.push_back(Value::integer(start + i * step));
    in.check_items(out.size());
    return Value::array(std::move(out));
  });
}

}  // namespace gale::jinja
