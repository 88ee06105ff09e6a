// Jinja2 parser: tokens -> AST. Operator precedence and statement forms follow jinja2's
// parser (conditional < or < and < not < compare < +,- < ~ < *,/,//,% < ** < unary < postfix
// < filters/tests). Unknown filters/tests and unsupported tags fail at parse time, naming
// the construct and its line, as jinja2 does at compile time.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace gale::jinja {

enum class NodeType : uint8_t {
  // expressions
  Const,     // value
  Name,      // name
  List,      // args = items
  Tuple,     // args = items
  Dict,      // args = key, value, key, value...
  GetAttr,   // a . name
  GetItem,   // a [ b ]
  Slice,     // a [ args[0] : args[1] : args[2] ]  (null NodePtr = omitted)
  Call,      // a ( args, kwargs )
  Filter,    // a | name(args, kwargs)   (a is null inside {% filter %} blocks)
  Test,      // a is [not] name(args)    (flag = negated)
  Neg,       // - a
  Pos,       // + a
  Not,       // not a
  BinOp,     // a name b   (+ - * / // % **)
  Concat,    // a ~ b
  Compare,   // a ops[0] args[0] ops[1] args[1] ...
  And,       // a and b
  Or,        // a or b
  CondExpr,  // b if a else c   (c may be null)
  // statements
  Text,         // value (a string)
  Output,       // {{ a }}
  If,           // if a: body else else_body (elif = nested If in else_body)
  For,          // for targets in a [if b]: body else else_body
  Set,          // set targets = a; flag: targets = {namespace, attribute}
  SetBlock,     // set targets[0] %} body {% endset; args = filter chain (Filter nodes)
  Macro,        // macro name(targets = params; args = defaults, null = none) body; ops: varargs/kwargs used
  CallBlock,    // call(targets = params) a (a Call) body
  FilterBlock,  // filter args (chain of Filter nodes) body
  With,         // with targets = args: body
  Break,
  Continue,
  Scope,        // {% generation %} body: rendered in place
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using NodeList = std::vector<NodePtr>;

struct Node {
  NodeType type;
  int line = 0;
  std::string name;
  Value value;
  NodePtr a, b, c;
  NodeList args;
  std::vector<std::pair<std::string, NodePtr>> kwargs;
  std::vector<std::string> ops;
  std::vector<std::string> targets;
  NodeList body, else_body;
  bool flag = false;  // Test: negated; Set/For: tuple unpack; Set: namespace attribute (targets = ns, attr)
};

struct ParseLimits {
  // Nesting of expressions and blocks, each link of an operator chain one level: bounds the C++
  // stack used later (evaluating and freeing the tree).
  int max_depth = 128;
};

// Parses a whole template. Throws gale::Error "chat template line N: ..." on syntax errors and
// on unsupported constructs.
NodeList parse_template(std::string_view source, const ParseLimits& limits = {});

// Filter and test names known to the evaluator (see jinja_builtins.cpp).
bool is_known_filter(const std::string& name);
bool is_known_test(const std::string& name);

}  // namespace gale::jinja
