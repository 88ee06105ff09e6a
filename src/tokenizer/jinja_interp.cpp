// Jinja2 evaluator: statements render into a string, expressions evaluate to Values.
#include "tokenizer/jinja_interp.h"

#include <algorithm>
#include <cmath>

namespace gale::jinja {

namespace {

std::string line_prefix(int line) { return "chat template line " + std::to_string(line) + ": "; }

// Runs `f`, turning a line-less RuntimeError into an Error that names `line`.
template <class F>
auto with_line(int line, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const TemplateRaised& e) {
    if (e.what() == std::string_view("raise_exception"))
      throw TemplateRaised(line_prefix(line) + "raise_exception: " + e.message, e.message);
    throw;
  } catch (const RuntimeError& e) {
    throw Error(line_prefix(line) + e.what());
  }
}

struct MacroFn : Callable {
  const Node* def;
  std::shared_ptr<Scope> closure;

  Value call(Interp& in, CallArgs& a) override {
    if (in.call_depth >= in.limits().max_call_depth) throw RuntimeError("macro recursion too deep in '" + name + "'");
    struct Depth {
      Interp& in;
      explicit Depth(Interp& i) : in(i) { ++in.call_depth; }
      ~Depth() { --in.call_depth; }
    } depth(in);
    auto sc = in.new_scope(closure);
    const auto& params = def->targets;
    std::vector<bool> bound(params.size(), false);
    std::vector<Value> extra;
    for (size_t i = 0; i < a.pos.size(); ++i) {
      if (i < params.size()) {
        sc->vars[params[i]] = a.pos[i];
        bound[i] = true;
      } else {
        extra.push_back(a.pos[i]);
      }
    }
    auto kwargs = std::make_shared<ObjectData>();
    for (auto& [k, v] : a.kw) {
      if (k == "caller") {
        sc->vars["caller"] = v;
        continue;
      }
      bool found = false;
      for (size_t i = 0; i < params.size(); ++i) {
        if (params[i] == k) {
          if (bound[i]) throw RuntimeError("macro '" + name + "' got multiple values for argument '" + k + "'");
          sc->vars[k] = v;
          bound[i] = true;
          found = true;
        }
      }
      if (!found) kwargs->set(k, v);
    }
    for (size_t i = 0; i < params.size(); ++i) {
      if (bound[i]) continue;
      sc->vars[params[i]] = def->args[i] ? in.eval(*def->args[i], sc) : Value::undefined(params[i]);
    }
    auto uses = [&](const char* what) { return std::find(def->ops.begin(), def->ops.end(), what) != def->ops.end(); };
    if (!extra.empty() && !uses("varargs"))
      throw RuntimeError("macro '" + name + "' takes not more than " + std::to_string(params.size()) + " argument(s)");
    if (!kwargs->items.empty() && !uses("kwargs"))
      throw RuntimeError("macro '" + name + "' takes no keyword argument '" + kwargs->items.front().first + "'");
    sc->vars["varargs"] = Value::array(std::move(extra), true);
    sc->vars["kwargs"] = Value::object(kwargs);
    std::string out;
    in.exec(def->body, sc, out);
    return Value::string(std::move(out));
  }
};

struct CallerFn : Callable {
  const Node* block;
  std::shared_ptr<Scope> scope;

  Value call(Interp& in, CallArgs& a) override {
    if (in.call_depth >= in.limits().max_call_depth) throw RuntimeError("caller() recursion too deep");
    ++in.call_depth;
    auto sc = in.new_scope(scope);
    const auto& params = block->targets;
    for (size_t i = 0; i < params.size(); ++i) {
      Value v;
      if (i < a.pos.size()) v = a.pos[i];
      else if (block->args[i]) v = in.eval(*block->args[i], sc);
      for (auto& [k, kv] : a.kw)
        if (k == params[i]) v = kv;
      sc->vars[params[i]] = v;
    }
    std::string out;
    try {
      in.exec(block->body, sc, out);
    } catch (...) {
      --in.call_depth;
      throw;
    }
    --in.call_depth;
    return Value::string(std::move(out));
  }
};

struct CycleFn : Callable {
  size_t index0;
  Value call(Interp&, CallArgs& a) override {
    if (a.pos.empty()) throw RuntimeError("no items for cycling given");
    return a.pos[index0 % a.pos.size()];
  }
};

}  // namespace

// Counts the interpreter's own recursion (statements inside statements, across macro calls).
struct DepthScope {
  Interp& in;
  explicit DepthScope(Interp& i) : in(i) {
    if (++in.depth_ > in.limits_.max_eval_depth) {
      --in.depth_;
      throw RuntimeError("template evaluation nested too deeply");
    }
  }
  ~DepthScope() { --in.depth_; }
};

const Value* Scope::lookup(const std::string& name) const {
  for (const Scope* s = this; s; s = s->parent.get()) {
    auto it = s->vars.find(name);
    if (it != s->vars.end()) return &it->second;
  }
  return nullptr;
}

Interp::Interp(const Limits& limits, std::shared_ptr<Scope> root, std::time_t now)
    : limits_(limits), root_(std::move(root)), now_(now) {}

// Macros keep their defining scope alive and namespaces can hold themselves, so a render can
// build reference cycles; nothing but the output string leaves a render, so break them here.
Interp::~Interp() {
  for (auto& w : scopes_)
    if (auto s = w.lock()) s->vars.clear();
  for (auto& w : objects_)
    if (auto o = w.lock()) {
      o->items.clear();
      o->index.clear();
    }
  if (root_) root_->vars.clear();
}

std::shared_ptr<Scope> Interp::new_scope(const std::shared_ptr<Scope>& parent) {
  auto s = std::make_shared<Scope>();
  s->parent = parent;
  scopes_.push_back(s);
  return s;
}

void Interp::track(const std::shared_ptr<ObjectData>& o) { objects_.push_back(o); }

void Interp::step() {
  if (++steps_ > limits_.max_steps) throw RuntimeError("template exceeded its step limit (runaway loop?)");
}

void Interp::check_size(size_t bytes) const {
  if (bytes > limits_.max_output_bytes) throw RuntimeError("template output exceeds the size limit");
}

void Interp::check_items(size_t n) const {
  if (n > limits_.max_items) throw RuntimeError("list exceeds the size limit");
}

Value Interp::call(const Value& callee, CallArgs& args, int line) {
  if (callee.is_undefined()) fail_undefined(callee);
  if (!callee.is_callable()) throw RuntimeError("'" + callee.type_name() + "' object is not callable");
  args.line = line;
  return callee.fn().call(*this, args);
}

Value Interp::call_filter(const std::string& name, const Value& input, CallArgs& args) {
  return builtin_filter(*this, name, input, args);
}

bool Interp::call_test(const std::string& name, const Value& v, CallArgs& args) {
  return builtin_test(*this, name, v, args);
}

// ---------------------------------------------------------------------------------------
// Statements
// ---------------------------------------------------------------------------------------

Interp::Flow Interp::exec(const NodeList& body, const std::shared_ptr<Scope>& s, std::string& out) {
  for (auto& n : body) {
    Flow f = exec_one(*n, s, out);
    if (f != Flow::Normal) return f;
  }
  return Flow::Normal;
}

Interp::Flow Interp::exec_one(const Node& n, const std::shared_ptr<Scope>& s, std::string& out) {
  step();
  DepthScope guard(*this);
  switch (n.type) {
    case NodeType::Text:
      out += n.value.str();
      with_line(n.line, [&] { check_size(out.size()); });
      return Flow::Normal;
    case NodeType::Output: {
      Value v = eval(*n.a, s);
      with_line(n.line, [&] {
        out += to_str(v);
        check_size(out.size());
      });
      return Flow::Normal;
    }
    case NodeType::If: {
      bool c = eval(*n.a, s).truthy();
      return exec(c ? n.body : n.else_body, s, out);
    }
    case NodeType::For: return exec_for(n, s, out);
    case NodeType::Set: {
      Value v = eval(*n.a, s);
      with_line(n.line, [&] {
        if (n.flag) {
          const Value* ns = s->lookup(n.targets[0]);
          if (!ns || !ns->is_object() || !ns->obj().is_namespace)
            throw RuntimeError("cannot assign attribute on non-namespace object '" + n.targets[0] + "'");
          ns->obj().set(n.targets[1], v);
        } else if (!n.ops.empty() && n.ops[0] == "unpack") {
          auto items = iterate(v);
          if (items.size() != n.targets.size())
            throw RuntimeError("cannot unpack " + std::to_string(items.size()) + " values into " +
                               std::to_string(n.targets.size()) + " names");
          for (size_t i = 0; i < items.size(); ++i) s->vars[n.targets[i]] = items[i];
        } else {
          s->vars[n.targets[0]] = v;
        }
      });
      return Flow::Normal;
    }
    case NodeType::SetBlock: {
      auto sc = new_scope(s);
      std::string buf;
      exec(n.body, sc, buf);
      Value v = Value::string(std::move(buf));
      for (auto& f : n.args) {
        CallArgs args;
        eval_args(*f, s, args);
        v = with_line(f->line, [&] { return call_filter(f->name, v, args); });
      }
      s->vars[n.targets[0]] = v;
      return Flow::Normal;
    }
    case NodeType::Macro: {
      auto m = std::make_shared<MacroFn>();
      m->name = n.name;
      m->def = &n;
      m->closure = s;
      s->vars[n.name] = Value::callable(m);
      return Flow::Normal;
    }
    case NodeType::CallBlock: {
      auto c = std::make_shared<CallerFn>();
      c->name = "caller";
      c->block = &n;
      c->scope = s;
      const Node& call_node = *n.a;
      Value callee = eval(*call_node.a, s);
      CallArgs args;
      eval_args(call_node, s, args);
      args.kw.emplace_back("caller", Value::callable(c));
      Value r = with_line(n.line, [&] { return call(callee, args, n.line); });
      out += to_str(r);
      with_line(n.line, [&] { check_size(out.size()); });
      return Flow::Normal;
    }
    case NodeType::FilterBlock: {
      auto sc = new_scope(s);
      std::string buf;
      exec(n.body, sc, buf);
      Value v = Value::string(std::move(buf));
      for (auto& f : n.args) {
        CallArgs args;
        eval_args(*f, s, args);
        v = with_line(f->line, [&] { return call_filter(f->name, v, args); });
      }
      out += to_str(v);
      with_line(n.line, [&] { check_size(out.size()); });
      return Flow::Normal;
    }
    case NodeType::With: {
      auto sc = new_scope(s);
      for (size_t i = 0; i < n.targets.size(); ++i) sc->vars[n.targets[i]] = eval(*n.args[i], s);
      return exec(n.body, sc, out);
    }
    case NodeType::Break: return Flow::Break;
    case NodeType::Continue: return Flow::Continue;
    case NodeType::Scope: return exec(n.body, s, out);
    default: throw Error(line_prefix(n.line) + "internal error: expression used as statement");
  }
}

Interp::Flow Interp::exec_for(const Node& n, const std::shared_ptr<Scope>& s, std::string& out) {
  Value seq = eval(*n.a, s);
  std::vector<Value> items = with_line(n.line, [&] { return iterate(seq); });
  auto bind = [&](Scope& sc, const Value& item) {
    if (!n.flag) {
      sc.vars[n.targets[0]] = item;
      return;
    }
    auto parts = iterate(item);
    if (parts.size() != n.targets.size())
      throw RuntimeError("cannot unpack " + std::to_string(parts.size()) + " values into " +
                         std::to_string(n.targets.size()) + " loop variables");
    for (size_t i = 0; i < parts.size(); ++i) sc.vars[n.targets[i]] = parts[i];
  };
  if (n.b) {  // loop filter: evaluated with the loop variables bound, before `loop` exists
    std::vector<Value> kept;
    for (auto& item : items) {
      step();
      auto sc = new_scope(s);
      with_line(n.line, [&] { bind(*sc, item); });
      if (eval(*n.b, sc).truthy()) kept.push_back(item);
    }
    items = std::move(kept);
  }
  size_t len = items.size();
  for (size_t i = 0; i < len; ++i) {
    step();
    auto sc = new_scope(s);
    with_line(n.line, [&] { bind(*sc, items[i]); });
    auto loop = std::make_shared<ObjectData>();
    loop->set("index", Value::integer(int64_t(i + 1)));
    loop->set("index0", Value::integer(int64_t(i)));
    loop->set("revindex", Value::integer(int64_t(len - i)));
    loop->set("revindex0", Value::integer(int64_t(len - i - 1)));
    loop->set("first", Value::boolean(i == 0));
    loop->set("last", Value::boolean(i + 1 == len));
    loop->set("length", Value::integer(int64_t(len)));
    loop->set("depth", Value::integer(1));
    loop->set("depth0", Value::integer(0));
    loop->set("previtem", i > 0 ? items[i - 1] : Value::undefined("there is no previous item"));
    loop->set("nextitem", i + 1 < len ? items[i + 1] : Value::undefined("there is no next item"));
    auto cyc = std::make_shared<CycleFn>();
    cyc->name = "loop.cycle";
    cyc->index0 = i;
    loop->set("cycle", Value::callable(cyc));
    sc->vars["loop"] = Value::object(loop);
    Flow f = exec(n.body, sc, out);
    if (f == Flow::Break) break;
  }
  if (len == 0 && !n.else_body.empty()) {
    auto sc = new_scope(s);
    return exec(n.else_body, sc, out);
  }
  return Flow::Normal;
}

// ---------------------------------------------------------------------------------------
// Expressions
// ---------------------------------------------------------------------------------------

void Interp::eval_args(const Node& n, const std::shared_ptr<Scope>& s, CallArgs& args) {
  for (auto& a : n.args) args.pos.push_back(eval(*a, s));
  for (auto& [k, v] : n.kwargs) args.kw.emplace_back(k, eval(*v, s));
  args.line = n.line;
}

Value Interp::eval(const Node& n, const std::shared_ptr<Scope>& s) {
  step();
  DepthScope guard(*this);
  return with_line(n.line, [&] { return eval_inner(n, s); });
}

Value Interp::eval_inner(const Node& n, const std::shared_ptr<Scope>& s) {
  switch (n.type) {
    case NodeType::Const: return n.value;
    case NodeType::Name: {
      const Value* v = s->lookup(n.name);
      return v ? *v : Value::undefined("'" + n.name + "' is undefined");
    }
    case NodeType::List:
    case NodeType::Tuple: {
      std::vector<Value> items;
      for (auto& a : n.args) items.push_back(eval(*a, s));
      return Value::array(std::move(items), n.type == NodeType::Tuple);
    }
    case NodeType::Dict: {
      auto o = std::make_shared<ObjectData>();
      for (size_t i = 0; i + 1 < n.args.size(); i += 2) {
        Value k = eval(*n.args[i], s);
        if (!k.is_string()) throw RuntimeError("unsupported Jinja construct: dict literal with non-string key");
        o->set(k.str(), eval(*n.args[i + 1], s));
      }
      return Value::object(o);
    }
    case NodeType::GetAttr: {
      Value obj = eval(*n.a, s);
      if (obj.is_undefined()) fail_undefined(obj);
      return get_attr(*this, obj, n.name);
    }
    case NodeType::GetItem: {
      Value obj = eval(*n.a, s);
      Value key = eval(*n.b, s);
      if (obj.is_undefined()) fail_undefined(obj);
      return get_item(*this, obj, key);
    }
    case NodeType::Slice: {
      Value obj = eval(*n.a, s);
      if (obj.is_undefined()) fail_undefined(obj);
      Value parts[3];
      for (int i = 0; i < 3; ++i) parts[i] = n.args[i] ? eval(*n.args[i], s) : Value::none();
      return slice_value(obj, parts[0], parts[1], parts[2]);
    }
    case NodeType::Call: {
      Value callee = eval(*n.a, s);
      CallArgs args;
      eval_args(n, s, args);
      return call(callee, args, n.line);
    }
    case NodeType::Filter: {
      Value input = n.a ? eval(*n.a, s) : Value();
      CallArgs args;
      eval_args(n, s, args);
      return call_filter(n.name, input, args);
    }
    case NodeType::Test: {
      Value v = eval(*n.a, s);
      CallArgs args;
      eval_args(n, s, args);
      bool r = call_test(n.name, v, args);
      return Value::boolean(n.flag ? !r : r);
    }
    case NodeType::Neg:
    case NodeType::Pos: {
      Value v = eval(*n.a, s);
      if (v.is_undefined()) fail_undefined(v);
      if (!v.is_number()) throw RuntimeError("bad operand type for unary " + std::string(n.type == NodeType::Neg ? "-" : "+") + ": '" + v.type_name() + "'");
      if (n.type == NodeType::Pos) return v.is_bool() ? Value::integer(v.get_int()) : v;
      if (v.is_float()) return Value::number(-v.as_double());
      if (v.get_int() == INT64_MIN) throw RuntimeError("integer overflow");
      return Value::integer(-v.get_int());
    }
    case NodeType::Not: return Value::boolean(!eval(*n.a, s).truthy());
    case NodeType::BinOp: {
      Value a = eval(*n.a, s);
      Value b = eval(*n.b, s);
      return binop(n.name, a, b);
    }
    case NodeType::Concat: {
      Value a = eval(*n.a, s);
      Value b = eval(*n.b, s);
      std::string r = to_str(a);
      r += to_str(b);
      check_size(r.size());
      return Value::string(std::move(r));
    }
    case NodeType::Compare: {
      Value left = eval(*n.a, s);
      for (size_t i = 0; i < n.ops.size(); ++i) {
        Value right = eval(*n.args[i], s);
        if (!compare(n.ops[i], left, right)) return Value::boolean(false);
        left = std::move(right);
      }
      return Value::boolean(true);
    }
    case NodeType::And: {
      Value a = eval(*n.a, s);
      return a.truthy() ? eval(*n.b, s) : a;
    }
    case NodeType::Or: {
      Value a = eval(*n.a, s);
      return a.truthy() ? a : eval(*n.b, s);
    }
    case NodeType::CondExpr:
      if (eval(*n.a, s).truthy()) return eval(*n.b, s);
      return n.c ? eval(*n.c, s) : Value::undefined("the inline if-expression evaluated to false and no else section was defined");
    default: throw RuntimeError("internal error: statement used as expression");
  }
}

namespace {

void overflow_check(bool overflow) {
  if (overflow) throw RuntimeError("integer overflow");
}

double py_fmod(double a, double b) {
  double m = std::fmod(a, b);
  if (m != 0 && ((m < 0) != (b < 0))) m += b;
  return m;
}

}  // namespace

std::string percent_format(const std::string& fmt, const Value& arg) {
  std::vector<Value> args = arg.is_array() && arg.array_data().is_tuple ? arg.items() : std::vector<Value>{arg};
  std::string out;
  size_t ai = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out.push_back(fmt[i]);
      continue;
    }
    if (++i >= fmt.size()) throw RuntimeError("incomplete format");
    if (fmt[i] == '%') {
      out.push_back('%');
      continue;
    }
    std::string spec = "%";
    while (i < fmt.size() && strchr("-+ 0#.0123456789", fmt[i])) spec.push_back(fmt[i++]);
    if (i >= fmt.size()) throw RuntimeError("incomplete format");
    char conv = fmt[i];
    if (ai >= args.size()) throw RuntimeError("not enough arguments for format string");
    const Value& v = args[ai++];
    char buf[512];
    switch (conv) {
      case 's': out += to_str(v); break;
      case 'r': out += repr(v); break;
      case 'd':
      case 'i':
        if (!v.is_number()) throw RuntimeError("%d format: a real number is required, not " + v.type_name());
        std::snprintf(buf, sizeof buf, (spec + "lld").c_str(), (long long)(v.is_float() ? (int64_t)v.as_double() : v.get_int()));
        out += buf;
        break;
      case 'f':
      case 'e':
      case 'g':
        if (!v.is_number()) throw RuntimeError("must be real number, not " + v.type_name());
        std::snprintf(buf, sizeof buf, (spec + conv).c_str(), v.as_double());
        out += buf;
        break;
      default: throw RuntimeError(std::string("unsupported format character '") + conv + "'");
    }
  }
  if (ai < args.size()) throw RuntimeError("not all arguments converted during string formatting");
  return out;
}

Value Interp::binop(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  auto type_error = [&]() -> Value {
    throw RuntimeError("unsupported operand type(s) for " + op + ": '" + a.type_name() + "' and '" + b.type_name() + "'");
  };
  bool ints = (a.is_int() || a.is_bool()) && (b.is_int() || b.is_bool());
  bool nums = a.is_number() && b.is_number();
  int64_t x = nums ? a.get_int() : 0, y = nums ? b.get_int() : 0, r = 0;
  if (op == "+") {
    if (ints) {
      overflow_check(__builtin_add_overflow(x, y, &r));
      return Value::integer(r);
    }
    if (nums) return Value::number(a.as_double() + b.as_double());
    if (a.is_string() && b.is_string()) {
      check_size(a.str().size() + b.str().size());
      return Value::string(a.str() + b.str());
    }
    if (a.is_array() && b.is_array() && a.array_data().is_tuple == b.array_data().is_tuple) {
      check_items(a.items().size() + b.items().size());
      std::vector<Value> items = a.items();
      items.insert(items.end(), b.items().begin(), b.items().end());
      return Value::array(std::move(items), a.array_data().is_tuple);
    }
    return type_error();
  }
  if (op == "-") {
    if (ints) {
      overflow_check(__builtin_sub_overflow(x, y, &r));
      return Value::integer(r);
    }
    if (nums) return Value::number(a.as_double() - b.as_double());
    return type_error();
  }
  if (op == "*") {
    if (ints) {
      overflow_check(__builtin_mul_overflow(x, y, &r));
      return Value::integer(r);
    }
    if (nums) return Value::number(a.as_double() * b.as_double());
    const Value* seq = (a.is_string() || a.is_array()) ? &a : (b.is_string() || b.is_array()) ? &b : nullptr;
    const Value* cnt = seq == &a ? &b : &a;
    if (!seq || !(cnt->is_int() || cnt->is_bool())) return type_error();
    int64_t k = std::max<int64_t>(0, cnt->get_int());
    if (seq->is_string()) {
      if (k > 0 && seq->str().size() > 0) check_size(seq->str().size() * uint64_t(std::min<int64_t>(k, int64_t(1) << 40)));
      std::string s;
      for (int64_t i = 0; i < k && !seq->str().empty(); ++i) s += seq->str();
      return Value::string(std::move(s));
    }
    if (k > 0 && !seq->items().empty()) check_items(seq->items().size() * uint64_t(std::min<int64_t>(k, int64_t(1) << 40)));
    std::vector<Value> items;
    for (int64_t i = 0; i < k && !seq->items().empty(); ++i) items.insert(items.end(), seq->items().begin(), seq->items().end());
    return Value::array(std::move(items), seq->array_data().is_tuple);
  }
  if (op == "/") {
    if (!nums) return type_error();
    if (b.as_double() == 0) throw RuntimeError("division by zero");
    return Value::number(a.as_double() / b.as_double());
  }
  if (op == "//") {
    if (!nums) return type_error();
    if (ints) {
      if (y == 0) throw RuntimeError("integer division or modulo by zero");
      if (x == INT64_MIN && y == -1) throw RuntimeError("integer overflow");
      int64_t q = x / y;
      if ((x % y != 0) && ((x < 0) != (y < 0))) --q;
      return Value::integer(q);
    }
    if (b.as_double() == 0) throw RuntimeError("float floor division by zero");
    return Value::number(std::floor(a.as_double() / b.as_double()));
  }
  if (op == "%") {
    if (a.is_string()) return Value::string(percent_format(a.str(), b));
    if (!nums) return type_error();
    if (ints) {
      if (y == 0) throw RuntimeError("integer division or modulo by zero");
      if (y == -1) return Value::integer(0);
      int64_t m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) m += y;
      return Value::integer(m);
    }
    if (b.as_double() == 0) throw RuntimeError("float modulo");
    return Value::number(py_fmod(a.as_double(), b.as_double()));
  }
  if (op == "**") {
    if (!nums) return type_error();
    if (ints && y >= 0) {
      int64_t result = 1, base = x;
      int64_t e = y;
      while (e > 0) {
        if (e & 1) overflow_check(__builtin_mul_overflow(result, base, &result));
        e >>= 1;
        if (e > 0) overflow_check(__builtin_mul_overflow(base, base, &base));
      }
      return Value::integer(result);
    }
    if (a.as_double() == 0 && b.as_double() < 0) throw RuntimeError("0.0 cannot be raised to a negative power");
    return Value::number(std::pow(a.as_double(), b.as_double()));
  }
  throw RuntimeError("unknown operator " + op);
}

namespace {
// Python ordering; throws TypeError-like errors for unorderable pairs.
int order(const Value& a, const Value& b, const char* op) {
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  if (a.is_number() && b.is_number()) {
    if ((a.is_int() || a.is_bool()) && (b.is_int() || b.is_bool())) return a.get_int() < b.get_int() ? -1 : a.get_int() > b.get_int();
    double x = a.as_double(), y = b.as_double();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) {
    int c = a.str().compare(b.str());
    return c < 0 ? -1 : c > 0;
  }
  if (a.is_array() && b.is_array() && a.array_data().is_tuple == b.array_data().is_tuple) {
    const auto &x = a.items(), &y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (equals(x[i], y[i])) continue;
      return order(x[i], y[i], op);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size();
  }
  throw RuntimeError(std::string("'") + op + "' not supported between instances of '" + a.type_name() + "' and '" + b.type_name() + "'");
}
}  // namespace

bool Interp::compare(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return equals(a, b);
  if (op == "!=") return !equals(a, b);
  if (op == "in") return contains(b, a);
  if (op == "notin") return !contains(b, a);
  int c = order(a, b, op.c_str());
  if (op == "<") return c < 0;
  if (op == "<=") return c <= 0;
  if (op == ">") return c > 0;
  return c >= 0;
}

// ---------------------------------------------------------------------------------------
// Template
// ---------------------------------------------------------------------------------------

Template::Template(std::string_view source, const Limits& limits) : limits_(limits) {
  ParseLimits pl;
  pl.max_depth = limits.max_parse_depth;
  body_ = parse_template(source, pl);
}

std::string Template::render(const std::unordered_map<std::string, Value>& vars, std::time_t now) const {
  auto globals = std::make_shared<Scope>();
  add_globals(*globals);
  auto root = std::make_shared<Scope>();
  root->parent = globals;
  root->vars = vars;
  Interp in(limits_, root, now);
  std::string out;
  try {
    in.exec(body_, root, out);
  } catch (const TemplateRaised&) {
    throw;
  } catch (const RuntimeError& e) {
    throw Error(std::string("chat template: ") + e.what());
  }
  return out;
}

}  // namespace gale::jinja
