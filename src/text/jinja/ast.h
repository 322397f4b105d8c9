// The syntax tree of a parsed template: expressions and statements, each with its template line
// so that errors can name it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "text/jinja/value.h"

namespace grpo::text::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal,    // value
    Name,       // name
    ListLit,    // items
    DictLit,    // items as key, value, key, value, ...
    Attr,       // items[0].name
    Index,      // items[0][items[1]]
    Slice,      // items[0][items[1]:items[2]:items[3]] (absent parts are null)
    Call,       // items[0](items[1..]) with arg_names (empty for positional)
    Filter,     // items[0] | name(items[1..]) with arg_names
    Test,       // items[0] is [not] name(items[1..]); negate
    Neg,        // -items[0]
    Not,        // not items[0]
    Binary,     // items[0] op items[1]
    And,
    Or,
    Cond,       // items[0] if items[1] else items[2] (items[2] may be null)
  };
  Kind kind;
  int line = 0;
  Value value;
  std::string name;  // Name, Attr, Filter, Test, Binary's operator
  std::vector<ExprPtr> items;
  std::vector<std::string> arg_names;  // for Call/Filter/Test: one per argument after items[0]
  bool negate = false;
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Node {
  enum class Kind {
    Text,        // text
    Output,      // {{ expr }}
    If,          // conditions[i] -> bodies[i]; a trailing body without a condition is the else
    For,         // for targets in expr [if filter]: bodies[0], else bodies[1]
    Set,         // targets[0] (or targets[0].attribute) = expr
    SetBlock,    // {% set targets[0] %}bodies[0]{% endset %}
    Macro,       // {% macro targets[0](params) %}bodies[0]
    Break,
    Continue,
    Generation,  // {% generation %}bodies[0]{% endgeneration %}: rendered as is
  };
  Kind kind;
  int line = 0;
  std::string text;
  ExprPtr expr, filter;
  std::vector<ExprPtr> conditions;
  std::vector<Body> bodies;
  std::vector<std::string> targets;
  std::string attribute;                       // Set of a namespace attribute
  std::vector<std::string> params;             // Macro
  std::vector<ExprPtr> defaults;               // Macro: one per param (null: none)
};

}  // namespace grpo::text::jinja
