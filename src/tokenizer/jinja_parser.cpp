// Jinja2 parser: recursive descent over the lexer's tokens.
#include "tokenizer/jinja_parser.h"

#include <algorithm>
#include <set>

#include "core/error.h"
#include "tokenizer/jinja_lexer.h"

namespace gale::jinja {

namespace {

[[noreturn]] void parse_fail(int line, const std::string& msg) {
  throw Error("chat template line " + std::to_string(line) + ": " + msg);
}

// Whether any Name node under `n` is `name` (macros accept extra arguments only if their body
// reads `varargs` / `kwargs`, as in jinja2).
bool mentions(const Node& n, const std::string& name) {
  if (n.type == NodeType::Name && n.name == name) return true;
  for (const Node* k : {n.a.get(), n.b.get(), n.c.get()})
    if (k && mentions(*k, name)) return true;
  for (const NodeList* l : {&n.args, &n.body, &n.else_body})
    for (auto& k : *l)
      if (k && mentions(*k, name)) return true;
  for (auto& kv : n.kwargs)
    if (kv.second && mentions(*kv.second, name)) return true;
  return false;
}

NodePtr make(NodeType t, int line) {
  auto n = std::make_unique<Node>();
  n->type = t;
  n->line = line;
  return n;
}

// Tags jinja2 knows but this interpreter does not run: each gets a clear error.
const std::set<std::string>& unsupported_tags() {
  static const std::set<std::string> s = {"include", "import", "from", "extends", "block", "do",
                                          "autoescape", "trans", "pluralize", "debug", "print"};
  return s;
}

class Parser {
 public:
  Parser(std::vector<Token> toks, const ParseLimits& lim) : t_(std::move(toks)), lim_(lim) {}

  NodeList parse_all() {
    NodeList body = subparse({}, "", 0);
    if (cur().type != Tok::Eof) parse_fail(cur().line, "unexpected token");
    return body;
  }

 private:
  std::vector<Token> t_;
  size_t i_ = 0;
  ParseLimits lim_;
  int depth_ = 0;
  int loop_depth_ = 0;  // for break/continue checks

  struct DepthGuard {
    Parser& p;
    explicit DepthGuard(Parser& pp, int line) : p(pp) {
      if (++p.depth_ > p.lim_.max_depth) parse_fail(line, "template nesting too deep");
    }
    ~DepthGuard() { --p.depth_; }
  };
  // A left-associative chain (a + b + c ..., a.b.c ..., x | f | g ...) is built by a loop, but
  // its tree is as deep as the chain is long, and evaluating or freeing it recurses that deep:
  // each link counts as one level of nesting, until the chain's function returns.
  struct ChainGuard {
    Parser& p;
    int links = 0;
    explicit ChainGuard(Parser& pp) : p(pp) {}
    void link(int line) {
      ++links;
      if (++p.depth_ > p.lim_.max_depth) parse_fail(line, "template nesting too deep (a chain of operators)");
    }
    ~ChainGuard() { p.depth_ -= links; }
  };

  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  void next() {
    if (i_ + 1 < t_.size()) ++i_;
  }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == Tok::Name && cur().text == n; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }
  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::Data: return "template data";
      case Tok::VarBegin: return "'{{'";
      case Tok::VarEnd: return "end of print statement '}}'";
      case Tok::BlockBegin: return "'{%'";
      case Tok::BlockEnd: return "end of statement block '%}'";
      case Tok::Eof: return "end of template";
      case Tok::String: return "string";
      case Tok::Int:
      case Tok::Float: return "number '" + t.text + "'";
      default: return "'" + t.text + "'";
    }
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) parse_fail(cur().line, std::string("expected '") + op + "', got " + describe(cur()));
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) parse_fail(cur().line, "expected a name, got " + describe(cur()));
    std::string s = cur().text;
    next();
    return s;
  }
  void expect_block_end() {
    if (cur().type != Tok::BlockEnd) parse_fail(cur().line, "expected end of statement block '%}', got " + describe(cur()));
    next();
  }

  // Parses statements until a block tag named in `ends` (left unconsumed: cursor on its name).
  NodeList subparse(const std::vector<std::string>& ends, const std::string& opener, int open_line) {
    NodeList body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::Eof) {
        if (!ends.empty()) {
          std::string want;
          for (auto& e : ends) want += (want.empty() ? "'" : " or '") + e + "'";
          parse_fail(open_line, "unterminated '" + opener + "' block (expected " + want + " before end of template)");
        }
        return body;
      }
      if (t.type == Tok::Data) {
        auto n = make(NodeType::Text, t.line);
        n->value = Value::string(t.text);
        body.push_back(std::move(n));
        next();
      } else if (t.type == Tok::VarBegin) {
        int line = t.line;
        next();
        auto n = make(NodeType::Output, line);
        n->a = parse_tuple(true);
        if (cur().type != Tok::VarEnd) parse_fail(cur().line, "expected end of print statement '}}', got " + describe(cur()));
        next();
        body.push_back(std::move(n));
      } else if (t.type == Tok::BlockBegin) {
        next();
        if (cur().type != Tok::Name) parse_fail(cur().line, "expected a tag name after '{%', got " + describe(cur()));
        for (auto& e : ends)
          if (cur().text == e) return body;
        body.push_back(parse_statement());
      } else {
        parse_fail(t.line, "unexpected " + describe(t));
      }
    }
  }

  NodePtr parse_statement() {
    const Token& t = cur();
    int line = t.line;
    DepthGuard g(*this, line);
    const std::string& tag = t.text;
    if (tag == "if") return parse_if();
    if (tag == "for") return parse_for();
    if (tag == "set") return parse_set();
    if (tag == "macro") return parse_macro();
    if (tag == "call") return parse_call_block();
    if (tag == "filter") return parse_filter_block();
    if (tag == "with") return parse_with();
    if (tag == "generation") {
      next();
      expect_block_end();
      auto n = make(NodeType::Scope, line);
      n->body = subparse({"endgeneration"}, "generation", line);
      next();
      expect_block_end();
      return n;
    }
    if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) parse_fail(line, "'" + tag + "' outside of a for loop");
      auto n = make(tag == "break" ? NodeType::Break : NodeType::Continue, line);
      next();
      expect_block_end();
      return n;
    }
    if (unsupported_tags().count(tag)) parse_fail(line, "unsupported Jinja construct '{% " + tag + " %}'");
    parse_fail(line, "unknown or misplaced tag '" + tag + "'");
  }

  NodePtr parse_if() {
    int line = cur().line;
    DepthGuard g(*this, line);
    next();  // if / elif
    auto n = make(NodeType::If, line);
    n->a = parse_tuple(true);
    expect_block_end();
    n->body = subparse({"elif", "else", "endif"}, "if", line);
    if (is_name("elif")) {
      n->else_body.push_back(parse_if());
      return n;  // the nested if consumed the endif
    }
    if (skip_name("else")) {
      expect_block_end();
      n->else_body = subparse({"endif"}, "if", line);
    }
    next();  // endif
    expect_block_end();
    return n;
  }

  // for-loop and set targets: `a`, `a, b`, `(a, b)`.
  std::vector<std::string> parse_targets(bool& tuple) {
    std::vector<std::string> names;
    bool paren = skip_op("(");
    tuple = paren;
    names.push_back(expect_name());
    while (skip_op(",")) {
      tuple = true;
      if (cur().type != Tok::Name) break;
      names.push_back(expect_name());
    }
    if (paren) expect_op(")");
    return names;
  }

  NodePtr parse_for() {
    int line = cur().line;
    next();
    auto n = make(NodeType::For, line);
    n->targets = parse_targets(n->flag);
    if (!skip_name("in")) parse_fail(cur().line, "expected 'in' in for loop, got " + describe(cur()));
    n->a = parse_tuple(false);
    if (skip_name("if")) n->b = parse_tuple(true);
    if (is_name("recursive")) parse_fail(cur().line, "unsupported Jinja construct 'recursive' for loop");
    expect_block_end();
    ++loop_depth_;
    n->body = subparse({"else", "endfor"}, "for", line);
    --loop_depth_;
    if (skip_name("else")) {
      expect_block_end();
      n->else_body = subparse({"endfor"}, "for", line);
    }
    next();
    expect_block_end();
    return n;
  }

  NodePtr parse_set() {
    int line = cur().line;
    next();
    // namespace attribute: set ns.attr = value
    if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == ".") {
      auto n = make(NodeType::Set, line);
      n->targets.push_back(expect_name());
      next();
      n->targets.push_back(expect_name());
      n->flag = true;
      expect_op("=");
      n->a = parse_tuple(true);
      expect_block_end();
      return n;
    }
    bool tuple = false;
    auto targets = parse_targets(tuple);
    if (skip_op("=")) {
      auto n = make(NodeType::Set, line);
      n->targets = std::move(targets);
      n->a = parse_tuple(true);
      n->ops.push_back(tuple ? "unpack" : "");
      expect_block_end();
      return n;
    }
    if (tuple || targets.size() != 1) parse_fail(line, "block 'set' takes a single name");
    auto n = make(NodeType::SetBlock, line);
    n->targets = std::move(targets);
    while (skip_op("|")) n->args.push_back(parse_filter(nullptr));
    expect_block_end();
    int saved = loop_depth_;
    n->body = subparse({"endset"}, "set", line);
    loop_depth_ = saved;
    next();
    expect_block_end();
    return n;
  }

  void parse_signature(Node& n, bool allow_empty) {
    if (!skip_op("(")) {
      if (allow_empty) return;
      parse_fail(cur().line, "expected '(' after macro name");
    }
    while (!is_op(")")) {
      if (!n.targets.empty()) expect_op(",");
      if (is_op(")")) break;
      n.targets.push_back(expect_name());
      n.args.push_back(skip_op("=") ? parse_expression(true) : nullptr);
    }
    expect_op(")");
  }

  NodePtr parse_macro() {
    int line = cur().line;
    next();
    auto n = make(NodeType::Macro, line);
    n->name = expect_name();
    parse_signature(*n, false);
    expect_block_end();
    int saved = loop_depth_;
    loop_depth_ = 0;
    n->body = subparse({"endmacro"}, "macro", line);
    loop_depth_ = saved;
    next();
    expect_block_end();
    for (auto& b : n->body) {
      if (mentions(*b, "varargs") && std::find(n->ops.begin(), n->ops.end(), "varargs") == n->ops.end()) n->ops.push_back("varargs");
      if (mentions(*b, "kwargs") && std::find(n->ops.begin(), n->ops.end(), "kwargs") == n->ops.end()) n->ops.push_back("kwargs");
    }
    return n;
  }

  NodePtr parse_call_block() {
    int line = cur().line;
    next();
    auto n = make(NodeType::CallBlock, line);
    if (is_op("(")) parse_signature(*n, true);
    n->a = parse_expression(true);
    if (n->a->type != NodeType::Call) parse_fail(line, "expected a macro call in 'call' block");
    expect_block_end();
    int saved = loop_depth_;
    loop_depth_ = 0;
    n->body = subparse({"endcall"}, "call", line);
    loop_depth_ = saved;
    next();
    expect_block_end();
    return n;
  }

  NodePtr parse_filter_block() {
    int line = cur().line;
    next();
    auto n = make(NodeType::FilterBlock, line);
    n->args.push_back(parse_filter(nullptr));
    while (skip_op("|")) n->args.push_back(parse_filter(nullptr));
    expect_block_end();
    n->body = subparse({"endfilter"}, "filter", line);
    next();
    expect_block_end();
    return n;
  }

  NodePtr parse_with() {
    int line = cur().line;
    next();
    auto n = make(NodeType::With, line);
    while (cur().type != Tok::BlockEnd) {
      if (!n->targets.empty()) expect_op(",");
      n->targets.push_back(expect_name());
      expect_op("=");
      n->args.push_back(parse_expression(true));
    }
    expect_block_end();
    n->body = subparse({"endwith"}, "with", line);
    next();
    expect_block_end();
    return n;
  }

  // ---- expressions -------------------------------------------------------------------

  bool at_expr_end() const {
    const Token& t = cur();
    if (t.type == Tok::VarEnd || t.type == Tok::BlockEnd || t.type == Tok::Eof) return true;
    if (t.type == Tok::Op && (t.text == ")" || t.text == "]" || t.text == "}")) return true;
    return false;
  }

  NodePtr parse_tuple(bool with_condexpr) {
    int line = cur().line;
    NodeList items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) {
        if (!skip_op(",")) break;
        is_tuple = true;
        if (at_expr_end() || is_name("if")) break;
      }
      items.push_back(with_condexpr ? parse_expression(true) : parse_or());
      if (!is_op(",")) break;
    }
    if (!is_tuple) return std::move(items[0]);
    auto n = make(NodeType::Tuple, line);
    n->args = std::move(items);
    return n;
  }

  NodePtr parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr() : parse_or(); }

  NodePtr parse_condexpr() {
    DepthGuard g(*this, cur().line);
    auto e = parse_or();
    ChainGuard chain(*this);
    while (is_name("if")) {
      int line = cur().line;
      chain.link(line);
      next();
      auto n = make(NodeType::CondExpr, line);
      n->a = parse_or();
      n->b = std::move(e);
      if (skip_name("else")) n->c = parse_condexpr();
      e = std::move(n);
    }
    return e;
  }

  NodePtr parse_or() {
    auto e = parse_and();
    ChainGuard chain(*this);
    while (is_name("or")) {
      chain.link(cur().line);
      auto n = make(NodeType::Or, cur().line);
      next();
      n->a = std::move(e);
      n->b = parse_and();
      e = std::move(n);
    }
    return e;
  }

  NodePtr parse_and() {
    auto e = parse_not();
    ChainGuard chain(*this);
    while (is_name("and")) {
      chain.link(cur().line);
      auto n = make(NodeType::And, cur().line);
      next();
      n->a = std::move(e);
      n->b = parse_not();
      e = std::move(n);
    }
    return e;
  }

  NodePtr parse_not() {
    if (is_name("not")) {
      DepthGuard g(*this, cur().line);
      auto n = make(NodeType::Not, cur().line);
      next();
      n->a = parse_not();
      return n;
    }
    return parse_compare();
  }

  NodePtr parse_compare() {
    int line = cur().line;
    auto e = parse_math1();
    NodePtr cmp;
    while (true) {
      std::string op;
      if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                    cur().text == "<=" || cur().text == ">" || cur().text == ">=")) {
        op = cur().text;
        next();
      } else if (is_name("in")) {
        op = "in";
        next();
      } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
        op = "notin";
        next();
        next();
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(NodeType::Compare, line);
        cmp->a = std::move(e);
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(e);
  }

  NodePtr binop(const char* op, NodePtr l, NodePtr r, int line) {
    auto n = make(NodeType::BinOp, line);
    n->name = op;
    n->a = std::move(l);
    n->b = std::move(r);
    return n;
  }

  NodePtr parse_math1() {
    auto e = parse_concat();
    ChainGuard chain(*this);
    while (is_op("+") || is_op("-")) {
      std::string op = cur().text;
      int line = cur().line;
      chain.link(line);
      next();
      e = binop(op.c_str(), std::move(e), parse_concat(), line);
    }
    return e;
  }

  NodePtr parse_concat() {
    auto e = parse_math2();
    ChainGuard chain(*this);
    while (is_op("~")) {
      chain.link(cur().line);
      auto n = make(NodeType::Concat, cur().line);
      next();
      n->a = std::move(e);
      n->b = parse_math2();
      e = std::move(n);
    }
    return e;
  }

  NodePtr parse_math2() {
    auto e = parse_pow();
    ChainGuard chain(*this);
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      std::string op = cur().text;
      int line = cur().line;
      chain.link(line);
      next();
      e = binop(op.c_str(), std::move(e), parse_pow(), line);
    }
    return e;
  }

  NodePtr parse_pow() {
    auto e = parse_unary(true);
    ChainGuard chain(*this);
    while (is_op("**")) {
      int line = cur().line;
      chain.link(line);
      next();
      e = binop("**", std::move(e), parse_unary(true), line);
    }
    return e;
  }

  NodePtr parse_unary(bool with_filter) {
    DepthGuard g(*this, cur().line);
    NodePtr e;
    int line = cur().line;
    if (is_op("-") || is_op("+")) {
      bool neg = is_op("-");
      next();
      e = make(neg ? NodeType::Neg : NodeType::Pos, line);
      e->a = parse_unary(false);
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  NodePtr parse_primary() {
    const Token& t = cur();
    int line = t.line;
    switch (t.type) {
      case Tok::Name: {
        std::string s = t.text;
        next();
        auto n = make(NodeType::Const, line);
        if (s == "true" || s == "True") n->value = Value::boolean(true);
        else if (s == "false" || s == "False") n->value = Value::boolean(false);
        else if (s == "none" || s == "None") n->value = Value::none();
        else {
          n->type = NodeType::Name;
          n->name = s;
        }
        return n;
      }
      case Tok::String: {
        std::string s;
        while (cur().type == Tok::String) {
          s += cur().text;
          next();
        }
        auto n = make(NodeType::Const, line);
        n->value = Value::string(std::move(s));
        return n;
      }
      case Tok::Int: {
        auto n = make(NodeType::Const, line);
        n->value = Value::integer(t.ival);
        next();
        return n;
      }
      case Tok::Float: {
        auto n = make(NodeType::Const, line);
        n->value = Value::number(t.fval);
        next();
        return n;
      }
      case Tok::Op:
        if (t.text == "(") {
          next();
          if (skip_op(")")) {
            auto n = make(NodeType::Tuple, line);
            return n;
          }
          auto e = parse_tuple(true);
          expect_op(")");
          return e;
        }
        if (t.text == "[") {
          next();
          auto n = make(NodeType::List, line);
          while (!is_op("]")) {
            if (!n->args.empty()) expect_op(",");
            if (is_op("]")) break;
            n->args.push_back(parse_expression(true));
          }
          expect_op("]");
          return n;
        }
        if (t.text == "{") {
          next();
          auto n = make(NodeType::Dict, line);
          while (!is_op("}")) {
            if (!n->args.empty()) expect_op(",");
            if (is_op("}")) break;
            n->args.push_back(parse_expression(true));
            expect_op(":");
            n->args.push_back(parse_expression(true));
          }
          expect_op("}");
          return n;
        }
        break;
      default: break;
    }
    parse_fail(line, "unexpected " + describe(t));
  }

  NodePtr parse_postfix(NodePtr e) {
    ChainGuard chain(*this);
    while (true) {
      int line = cur().line;
      if (is_op(".") || is_op("[") || is_op("(")) chain.link(line);
      if (is_op(".")) {
        next();
        if (cur().type == Tok::Name) {
          auto n = make(NodeType::GetAttr, line);
          n->a = std::move(e);
          n->name = expect_name();
          e = std::move(n);
        } else if (cur().type == Tok::Int) {
          auto n = make(NodeType::GetItem, line);
          n->a = std::move(e);
          n->b = make(NodeType::Const, line);
          n->b->value = Value::integer(cur().ival);
          next();
          e = std::move(n);
        } else {
          parse_fail(line, "expected an attribute name after '.', got " + describe(cur()));
        }
      } else if (is_op("[")) {
        next();
        e = parse_subscript(std::move(e), line);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  NodePtr parse_subscript(NodePtr obj, int line) {
    NodePtr parts[3];
    bool slice = false;
    if (!is_op(":")) parts[0] = parse_expression(true);
    if (skip_op(":")) {
      slice = true;
      if (!is_op("]") && !is_op(":")) parts[1] = parse_expression(true);
      if (skip_op(":"))
        if (!is_op("]")) parts[2] = parse_expression(true);
    }
    expect_op("]");
    if (!slice) {
      auto n = make(NodeType::GetItem, line);
      n->a = std::move(obj);
      n->b = std::move(parts[0]);
      return n;
    }
    auto n = make(NodeType::Slice, line);
    n->a = std::move(obj);
    for (auto& p : parts) n->args.push_back(std::move(p));
    return n;
  }

  void parse_call_args(Node& n) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (is_op(")")) break;
      if (is_op("*") || is_op("**")) parse_fail(cur().line, "unsupported Jinja construct '*args/**kwargs' in call");
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        std::string key = expect_name();
        next();
        n.kwargs.emplace_back(key, parse_expression(true));
      } else {
        if (!n.kwargs.empty()) parse_fail(cur().line, "positional argument after keyword argument");
        n.args.push_back(parse_expression(true));
      }
    }
    expect_op(")");
  }

  NodePtr parse_call(NodePtr callee) {
    auto n = make(NodeType::Call, cur().line);
    n->a = std::move(callee);
    parse_call_args(*n);
    return n;
  }

  NodePtr parse_filter(NodePtr input) {
    int line = cur().line;
    auto n = make(NodeType::Filter, line);
    n->name = expect_name();
    while (is_op(".")) {
      next();
      n->name += "." + expect_name();
    }
    if (!is_known_filter(n->name)) parse_fail(line, "unsupported Jinja construct: no filter named '" + n->name + "'");
    n->a = std::move(input);
    if (is_op("(")) parse_call_args(*n);
    return n;
  }

  NodePtr parse_filter_expr(NodePtr e) {
    ChainGuard chain(*this);
    while (true) {
      if (is_op("|") || is_name("is")) chain.link(cur().line);
      if (is_op("|")) {
        next();
        e = parse_filter(std::move(e));
      } else if (is_name("is")) {
        int line = cur().line;
        next();
        auto n = make(NodeType::Test, line);
        n->flag = skip_name("not");
        n->name = expect_name();
        while (is_op(".")) {
          next();
          n->name += "." + expect_name();
        }
        if (!is_known_test(n->name)) parse_fail(line, "unsupported Jinja construct: no test named '" + n->name + "'");
        n->a = std::move(e);
        if (is_op("(")) {
          parse_call_args(*n);
        } else if ((cur().type == Tok::Name || cur().type == Tok::String || cur().type == Tok::Int ||
                    cur().type == Tok::Float || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) parse_fail(cur().line, "you cannot chain multiple tests with 'is'");
          auto arg = parse_primary();
          n->args.push_back(parse_postfix(std::move(arg)));
        }
        e = std::move(n);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }
};

}  // namespace

NodeList parse_template(std::string_view source, const ParseLimits& limits) {
  return Parser(lex_template(source), limits).parse_all();
}

}  // namespace gale::jinja
