// Values of the Jinja subset that chat templates use, with Python's semantics where a template can
// see them: truthiness, equality, str() of each type, json.dumps for `tojson`. Dicts keep insertion
// order (as Python's do), so `tojson` of a message writes its keys in the order they were given.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace grpo::text::jinja {

struct Value;
using List = std::vector<Value>;

// An insertion-ordered string-keyed map (linear lookup: messages and namespaces are small).
struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value v);
};

// Arguments of a call: positional, then keyword (`namespace(a=1)`, `tojson(indent=2)`).
struct Args {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> named;
};

struct Function {
  std::string name;
  std::function<Value(const Args&)> call;
};

struct Value {
  enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Function };
  Kind kind = Kind::Undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;                    // String; for Undefined, the name that was looked up
  std::shared_ptr<jinja::List> list;  // List (shared: a list literal is never mutated)
  std::shared_ptr<jinja::Dict> dict;  // Dict and Namespace (a namespace's attributes can be set)
  std::shared_ptr<jinja::Function> fn;

  static Value undefined(std::string name = "");
  static Value none();
  static Value boolean(bool v);
  static Value integer(int64_t v);
  static Value number(double v);
  static Value string(std::string v);
  static Value make_list(jinja::List items = {});
  static Value make_dict(jinja::Dict d = {});
  static Value make_namespace(jinja::Dict d = {});
  static Value function(std::string name, std::function<Value(const Args&)> call);

  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_none() const { return kind == Kind::None; }
  bool is_string() const { return kind == Kind::String; }
  bool is_number() const { return kind == Kind::Int || kind == Kind::Float || kind == Kind::Bool; }
  bool is_mapping() const { return kind == Kind::Dict; }
  bool is_list() const { return kind == Kind::List; }
  double as_double() const { return kind == Kind::Float ? f : (double)(kind == Kind::Bool ? (int64_t)b : i); }
};

// Python's type names, for error messages: 'str', 'int', 'list', 'dict', 'NoneType', ...
std::string type_name(const Value& v);
bool truthy(const Value& v);
// Python's ==: numbers by value (True == 1), containers element-wise.
bool equal(const Value& a, const Value& b);
// str(v) as Jinja prints it: None -> "None", True -> "True", 1.0 -> "1.0", an undefined -> "".
std::string to_text(const Value& v);
// repr(): strings quoted, containers as Python writes them.
std::string repr(const Value& v);
// json.dumps(v, ensure_ascii=False, indent=indent, separators=..., sort_keys=...): indent < 0 is None.
std::string to_json(const Value& v, int indent = -1, bool sort_keys = false, const std::string* item_sep = nullptr,
                    const std::string* key_sep = nullptr);
// Python's float repr: the shortest text that reads back exactly ("0.1", "1e-05", "1e+16", "2.0").
std::string float_repr(double d);

Value from_json(const nlohmann::ordered_json& j);

// Python's str.isspace for one code point, and UTF-8 <-> code points for length, slicing, strip.
bool py_isspace(uint32_t cp);
std::vector<uint32_t> code_points(const std::string& s);
std::string from_code_points(const std::vector<uint32_t>& cps, size_t begin, size_t end);

}  // namespace grpo::text::jinja
