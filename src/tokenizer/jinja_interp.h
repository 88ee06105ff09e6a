// Jinja2 interpreter for chat templates: the evaluator over the AST of jinja_parser.h.
//
// It behaves like transformers' ImmutableSandboxedEnvironment(trim_blocks=True,
// lstrip_blocks=True, extensions=[loopcontrols]) with its `tojson`, `raise_exception` and
// `strftime_now`. Every render is bounded: evaluation steps, output bytes, macro recursion
// and parse nesting are limited, so a hostile template fails with gale::Error instead of
// hanging or overflowing the stack.
#pragma once
#include <ctime>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/jinja_parser.h"
#include "tokenizer/jinja_value.h"

namespace gale::jinja {

struct Limits {
  size_t max_output_bytes = size_t(64) << 20;  // also bounds any single string built
  uint64_t max_steps = 5'000'000;              // evaluated nodes + loop iterations (~100x a long chat)
  int max_call_depth = 48;                     // macro/caller recursion
  int max_parse_depth = 128;                   // nesting of expressions and blocks
  int max_eval_depth = 1000;                   // dynamic nesting (blocks x macro calls): bounds the C++ stack
  size_t max_items = size_t(1) << 22;          // elements in one list built by the template
};

// Error from a template's own raise_exception(): the message is the template's.
class TemplateRaised : public Error {
 public:
  TemplateRaised(const std::string& what, std::string message) : Error(what), message(std::move(message)) {}
  std::string message;
};

// Thrown by builtins without a line; the interpreter adds the line of the node.
class RuntimeError : public Error {
 public:
  explicit RuntimeError(const std::string& m) : Error(m) {}
};

struct Scope {
  std::unordered_map<std::string, Value> vars;
  std::shared_ptr<Scope> parent;
  const Value* lookup(const std::string& name) const;
};

class Interp {
 public:
  Interp(const Limits& limits, std::shared_ptr<Scope> root, std::time_t now);
  ~Interp();
  Interp(const Interp&) = delete;
  Interp& operator=(const Interp&) = delete;

  std::shared_ptr<Scope> new_scope(const std::shared_ptr<Scope>& parent);
  void track(const std::shared_ptr<ObjectData>& o);  // mutable objects that may form cycles

  enum class Flow { Normal, Break, Continue };

  Value eval(const Node& n, const std::shared_ptr<Scope>& s);
  Flow exec(const NodeList& body, const std::shared_ptr<Scope>& s, std::string& out);
  Value call(const Value& callee, CallArgs& args, int line);
  Value call_filter(const std::string& name, const Value& input, CallArgs& args);
  bool call_test(const std::string& name, const Value& v, CallArgs& args);
  bool compare(const std::string& op, const Value& a, const Value& b);
  void step();
  void check_size(size_t bytes) const;
  void check_items(size_t n) const;

  const Limits& limits() const { return limits_; }
  std::time_t now() const { return now_; }
  int call_depth = 0;

 private:
  Flow exec_one(const Node& n, const std::shared_ptr<Scope>& s, std::string& out);
  Flow exec_for(const Node& n, const std::shared_ptr<Scope>& s, std::string& out);
  Value eval_inner(const Node& n, const std::shared_ptr<Scope>& s);
  void eval_args(const Node& n, const std::shared_ptr<Scope>& s, CallArgs& args);
  Value binop(const std::string& op, const Value& a, const Value& b);

  Limits limits_;
  std::shared_ptr<Scope> root_;
  std::time_t now_;
  uint64_t steps_ = 0;
  int depth_ = 0;
  std::vector<std::weak_ptr<Scope>> scopes_;
  std::vector<std::weak_ptr<ObjectData>> objects_;
  friend struct DepthScope;
};

// A parsed template, rendered any number of times with different variables.
class Template {
 public:
  explicit Template(std::string_view source, const Limits& limits = {});
  // `vars` are the template's variables (messages, tools, ...). `now` feeds strftime_now.
  std::string render(const std::unordered_map<std::string, Value>& vars, std::time_t now = std::time(nullptr)) const;

 private:
  NodeList body_;
  Limits limits_;
};

// Builtins (jinja_builtins.cpp).
Value builtin_filter(Interp& in, const std::string& name, const Value& input, CallArgs& args);
bool builtin_test(Interp& in, const std::string& name, const Value& v, CallArgs& args);
Value get_attr(Interp& in, const Value& obj, const std::string& name);
Value get_item(Interp& in, const Value& obj, const Value& key);
Value slice_value(const Value& obj, const Value& start, const Value& stop, const Value& step);
std::vector<Value> iterate(const Value& v);  // for-loops, filters: list items, str chars, dict keys
bool contains(const Value& container, const Value& item);
void add_globals(Scope& s);
[[noreturn]] void fail_undefined(const Value& v);
std::string percent_format(const std::string& fmt, const Value& args);  // Python "fmt % args"

}  // namespace gale::jinja
