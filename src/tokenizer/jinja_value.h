// Runtime values of the Jinja2 interpreter used for chat templates.
//
// The semantics follow Python as jinja2 sees it: dicts keep insertion order, `str()` of
// None is "None", 1 == 1.0 == True, undefined prints as "" but fails on arithmetic or
// attribute access. Input data arrives as nlohmann::ordered_json (ordered, because
// `tool | tojson` must print keys in the order the caller wrote them, as Python does).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace gale::jinja {

class Value;
class Interp;

// Containers free their nested containers without recursion (jinja_value.cpp): a template loop
// can build a list nested a million deep (`set ns.x = [ns.x]`), and a recursive destructor
// chain that deep overflows the stack (issue 15).
struct ArrayData {
  std::vector<Value> items;
  bool is_tuple = false;  // only changes how it prints: (1, 2) instead of [1, 2]
  ArrayData() = default;
  ArrayData(const ArrayData&) = default;
  ArrayData(ArrayData&&) = default;
  ArrayData& operator=(const ArrayData&) = default;
  ArrayData& operator=(ArrayData&&) = default;
  ~ArrayData();
};

// A Python dict with string keys, in insertion order; also used for namespace() objects.
struct ObjectData {
  std::vector<std::pair<std::string, Value>> items;
  std::unordered_map<std::string, size_t> index;
  bool is_namespace = false;  // the only objects whose attributes `set ns.x = ...` may assign

  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value v);
  ObjectData() = default;
  ObjectData(const ObjectData&) = default;
  ObjectData(ObjectData&&) = default;
  ObjectData& operator=(const ObjectData&) = default;
  ObjectData& operator=(ObjectData&&) = default;
  ~ObjectData();
};

struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  int line = 0;
};

// Macros, builtin functions and bound methods ('abc'.upper, d.items, loop.cycle).
struct Callable {
  virtual ~Callable() = default;
  virtual Value call(Interp& in, CallArgs& args) = 0;
  std::string name;
};

enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, Array, Object, Callable };

class Value {
 public:
  Value() = default;  // undefined
  static Value undefined(std::string hint = {});  // hint names the missing variable for errors
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value number(double d);
  static Value string(std::string s);
  static Value array(std::vector<Value> items = {}, bool is_tuple = false);
  static Value object(std::shared_ptr<ObjectData> o = nullptr);
  static Value callable(std::shared_ptr<Callable> c);
  static Value from_json(const nlohmann::ordered_json& j, int depth = 0);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_int() const { return kind_ == Kind::Int; }
  bool is_float() const { return kind_ == Kind::Float; }
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float || kind_ == Kind::Bool; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_array() const { return kind_ == Kind::Array; }
  bool is_object() const { return kind_ == Kind::Object; }
  bool is_callable() const { return kind_ == Kind::Callable; }

  bool get_bool() const { return b_; }
  int64_t get_int() const { return kind_ == Kind::Bool ? int64_t(b_) : i_; }
  double as_double() const { return kind_ == Kind::Float ? f_ : double(get_int()); }
  const std::string& str() const { return *s_; }  // String only
  std::string undefined_hint() const { return kind_ == Kind::Undefined && s_ ? *s_ : std::string(); }
  const std::vector<Value>& items() const { return a_->items; }
  const ArrayData& array_data() const { return *a_; }
  ObjectData& obj() const { return *o_; }
  const std::shared_ptr<ObjectData>& obj_ptr() const { return o_; }
  Callable& fn() const { return *c_; }
  // The container only this value holds (so its items may be moved out before it dies), else null.
  ArrayData* sole_array() const { return a_ && a_.use_count() == 1 ? a_.get() : nullptr; }
  ObjectData* sole_object() const { return o_ && o_.use_count() == 1 ? o_.get() : nullptr; }

  bool truthy() const;
  std::string type_name() const;  // Python's name for the type, for error messages

 private:
  Kind kind_ = Kind::Undefined;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::shared_ptr<const std::string> s_;
  std::shared_ptr<ArrayData> a_;
  std::shared_ptr<ObjectData> o_;
  std::shared_ptr<Callable> c_;
};

// Python str(): what {{ x }} prints. Undefined -> "".
std::string to_str(const Value& v);
// Python repr(), used for items inside printed lists/dicts.
std::string repr(const Value& v);
// Python's float repr: shortest round-trip digits, exponent outside [1e-4, 1e16).
std::string format_float(double d);
// Python ==: numbers compare by value across int/float/bool; containers deeply.
bool equals(const Value& a, const Value& b);
// json.dumps(v, ensure_ascii=..., indent=..., separators=..., sort_keys=...) as
// transformers' tojson filter calls it. indent < 0 means None.
std::string to_json(const Value& v, int indent, const std::string& indent_str, bool ensure_ascii,
                    const std::string& item_sep, const std::string& key_sep, bool sort_keys);
nlohmann::ordered_json to_json_value(const Value& v, int depth = 0);

// UTF-8 helpers: Jinja (Python) strings index, slice and count by code point.
std::u32string utf8_decode(std::string_view s);
std::string utf8_encode(std::u32string_view s);
void utf8_append(std::string& out, char32_t cp);
size_t utf8_length(std::string_view s);
bool is_py_space(char32_t c);  // Python str.isspace()

}  // namespace gale::jinja
