#include "text/jinja/template.h"

#include <algorithm>
#include <climits>
#include <stdexcept>
#include <unordered_map>

#include "text/jinja/builtins.h"
#include "text/jinja/parser.h"
#include "util/error.h"

namespace grpo::text::jinja {
namespace {

using K = Value::Kind;

class Renderer {
 public:
  Renderer(const std::string& where, const Dict& variables) : where_(where) {
    scopes_.emplace_back();
    for (const auto& [k, v] : globals().items) scopes_.back()[k] = v;
    for (const auto& [k, v] : variables.items) scopes_.back()[k] = v;
    scopes_.emplace_back();  // the template's own top-level assignments
  }

  enum class Flow { Normal, Break, Continue };

  Flow render(const Body& body, std::string& out) {
    for (const auto& n : body) {
      Flow f = render_node(*n, out);
      if (f != Flow::Normal) return f;
      if (out.size() > Template::kMaxOutputBytes) fail(n->line, "the rendered text passes 64 MiB");
    }
    return Flow::Normal;
  }

 private:
  std::string where_;
  std::vector<std::unordered_map<std::string, Value>> scopes_;
  int depth_ = 0;
  int64_t iterations_ = 0;

  [[noreturn]] void fail(int line, const std::string& what) const {
    throw Error(where_ + ": line " + std::to_string(line) + ": " + what);
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    return Value::undefined(name);
  }

  void assign(const std::vector<std::string>& targets, const Value& v, int line) {
    if (targets.size() == 1) {
      scopes_.back()[targets[0]] = v;
      return;
    }
    if (v.kind != K::List || v.list->size() != targets.size())
      fail(line, "cannot unpack " + type_name(v) + " into " + std::to_string(targets.size()) + " names");
    for (size_t i = 0; i < targets.size(); ++i) scopes_.back()[targets[i]] = (*v.list)[i];
  }

  Flow render_node(const Node& n, std::string& out) {
    switch (n.kind) {
      case Node::Kind::Text: out += n.text; return Flow::Normal;
      case Node::Kind::Output: out += to_text(eval(*n.expr)); return Flow::Normal;
      case Node::Kind::If:
        for (size_t i = 0; i < n.bodies.size(); ++i)
          if (i >= n.conditions.size() || truthy(eval(*n.conditions[i]))) return render(n.bodies[i], out);
        return Flow::Normal;
      case Node::Kind::For: return render_for(n, out);
      case Node::Kind::Set:
        if (!n.attribute.empty()) {
          Value ns = lookup(n.targets[0]);
          if (ns.kind != K::Namespace) fail(n.line, "cannot set an attribute of '" + n.targets[0] + "': it is not a namespace");
          ns.dict->set(n.attribute, eval(*n.expr));
        } else {
          assign(n.targets, eval(*n.expr), n.line);
        }
        return Flow::Normal;
      case Node::Kind::SetBlock: {
        std::string text;
        render(n.bodies[0], text);
        scopes_.back()[n.targets[0]] = Value::string(text);
        return Flow::Normal;
      }
      case Node::Kind::Macro: {
        const Node* macro = &n;
        scopes_.back()[n.targets[0]] = Value::function(n.targets[0], [this, macro](const Args& a) { return call_macro(*macro, a); });
        return Flow::Normal;
      }
      case Node::Kind::Break: return Flow::Break;
      case Node::Kind::Continue: return Flow::Continue;
      case Node::Kind::Generation: return render(n.bodies[0], out);
    }
    return Flow::Normal;
  }

  Flow render_for(const Node& n, std::string& out) {
    List items = iterate_at(eval(*n.expr), n.line);
    if (n.filter) {
      List kept;
      for (const Value& item : items) {
        scopes_.emplace_back();
        assign(n.targets, item, n.line);
        bool keep = truthy(eval(*n.filter));
        scopes_.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const int64_t length = (int64_t)items.size();
    for (int64_t i = 0; i < length; ++i) {
      if (++iterations_ > Template::kMaxIterations) fail(n.line, "the template runs past a million loop iterations");
      Dict loop;
      loop.set("index", Value::integer(i + 1));
      loop.set("index0", Value::integer(i));
      loop.set("revindex", Value::integer(length - i));
      loop.set("revindex0", Value::integer(length - i - 1));
      loop.set("first", Value::boolean(i == 0));
      loop.set("last", Value::boolean(i == length - 1));
      loop.set("length", Value::integer(length));
      loop.set("previtem", i > 0 ? items[(size_t)i - 1] : Value::undefined("previtem"));
      loop.set("nextitem", i + 1 < length ? items[(size_t)i + 1] : Value::undefined("nextitem"));
      scopes_.emplace_back();
      scopes_.back()["loop"] = Value::make_dict(std::move(loop));
      assign(n.targets, items[(size_t)i], n.line);
      Flow f = render(n.bodies[0], out);
      scopes_.pop_back();
      if (f == Flow::Break) break;
    }
    if (length == 0 && n.bodies.size() > 1) return render(n.bodies[1], out);
    return Flow::Normal;
  }

  Value call_macro(const Node& m, const Args& a) {
    if (++depth_ > Template::kMaxDepth) fail(m.line, "macros nest deeper than 256 calls");
    if (a.positional.size() > m.params.size()) fail(m.line, "macro '" + m.targets[0] + "' takes " + std::to_string(m.params.size()) + " arguments");
    std::unordered_map<std::string, Value> scope;
    for (size_t i = 0; i < m.params.size(); ++i) {
      Value v = i < a.positional.size() ? a.positional[i] : Value::undefined(m.params[i]);
      for (const auto& [k, x] : a.named)
        if (k == m.params[i]) v = x;
      if (v.is_undefined() && m.defaults[i]) v = eval(*m.defaults[i]);
      scope[m.params[i]] = v;
    }
    for (const auto& [k, x] : a.named)
      if (std::find(m.params.begin(), m.params.end(), k) == m.params.end())
        fail(m.line, "macro '" + m.targets[0] + "' has no argument '" + k + "'");
    // A macro sees the template's globals and top-level names, not its caller's loop variables.
    std::vector<std::unordered_map<std::string, Value>> saved(scopes_.begin() + 2, scopes_.end());
    scopes_.resize(2);
    scopes_.push_back(std::move(scope));
    std::string out;
    try {
      render(m.bodies[0], out);
    } catch (...) {
      scopes_.resize(2);
      scopes_.insert(scopes_.end(), saved.begin(), saved.end());
      --depth_;
      throw;
    }
    scopes_.resize(2);
    scopes_.insert(scopes_.end(), saved.begin(), saved.end());
    --depth_;
    return Value::string(out);
  }

  List iterate_at(const Value& v, int line) {
    try {
      return iterate(v);
    } catch (const std::runtime_error& e) {
      fail(line, e.what());
    }
  }

  Args eval_args(const Expr& e, size_t from) {
    Args a;
    for (size_t i = from; i < e.items.size(); ++i) {
      const std::string& name = e.arg_names[i - from];
      if (name.empty()) a.positional.push_back(eval(*e.items[i]));
      else a.named.emplace_back(name, eval(*e.items[i]));
    }
    return a;
  }

  Value eval(const Expr& e) {
    try {
      return eval_inner(e);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& x) {
      fail(e.line, x.what());
    }
  }

  Value attribute(const Value& obj, const std::string& name) {
    if (obj.is_undefined()) throw std::runtime_error("'" + obj.s + "' is undefined");
    if (obj.kind == K::Dict || obj.kind == K::Namespace) {
      if (obj.kind == K::Dict) {
        Value m = method(obj, name);
        if (!m.is_undefined()) return m;
      }
      const Value* f = obj.dict->find(name);
      return f ? *f : Value::undefined(name);
    }
    return method(obj, name);
  }

  Value eval_inner(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::Literal: return e.value;
      case Expr::Kind::Name: return lookup(e.name);
      case Expr::Kind::ListLit: {
        List items;
        for (const auto& x : e.items) items.push_back(eval(*x));
        return Value::make_list(std::move(items));
      }
      case Expr::Kind::DictLit: {
        Dict d;
        for (size_t i = 0; i + 1 < e.items.size(); i += 2) {
          Value k = eval(*e.items[i]);
          if (k.kind != K::String) throw std::runtime_error("dict keys must be strings here, not " + type_name(k));
          d.set(k.s, eval(*e.items[i + 1]));
        }
        return Value::make_dict(std::move(d));
      }
      case Expr::Kind::Attr: return attribute(eval(*e.items[0]), e.name);
      case Expr::Kind::Index: return subscript(eval(*e.items[0]), eval(*e.items[1]));
      case Expr::Kind::Slice: {
        auto part = [&](size_t i) { return e.items[i] ? eval(*e.items[i]) : Value::undefined(); };
        return slice(eval(*e.items[0]), part(1), part(2), part(3));
      }
      case Expr::Kind::Call: {
        Value callee = eval(*e.items[0]);
        if (callee.kind != K::Function) {
          std::string what = e.items[0]->kind == Expr::Kind::Name || e.items[0]->kind == Expr::Kind::Attr
                                 ? "'" + e.items[0]->name + "'"
                                 : "the value";
          throw std::runtime_error(what + (callee.is_undefined() ? " is undefined" : " is not callable (" + type_name(callee) + ")"));
        }
        return callee.fn->call(eval_args(e, 1));
      }
      case Expr::Kind::Filter: return apply_filter(e.name, eval(*e.items[0]), eval_args(e, 1));
      case Expr::Kind::Test: {
        bool r = apply_test(e.name, eval(*e.items[0]), eval_args(e, 1));
        return Value::boolean(e.negate ? !r : r);
      }
      case Expr::Kind::Neg: {
        Value v = eval(*e.items[0]);
        if (v.kind == K::Int) {
          if (v.i == INT64_MIN) throw std::runtime_error("integer overflow in unary - (past 64 bits)");
          return Value::integer(-v.i);
        }
        if (v.kind == K::Bool) return Value::integer(-(int64_t)v.b);
        if (v.kind == K::Float) return Value::number(-v.f);
        throw std::runtime_error("bad operand type for unary -: '" + type_name(v) + "'");
      }
      case Expr::Kind::Not: return Value::boolean(!truthy(eval(*e.items[0])));
      case Expr::Kind::Binary: return binary_op(e.name, eval(*e.items[0]), eval(*e.items[1]));
      case Expr::Kind::And: {
        Value a = eval(*e.items[0]);
        return truthy(a) ? eval(*e.items[1]) : a;
      }
      case Expr::Kind::Or: {
        Value a = eval(*e.items[0]);
        return truthy(a) ? a : eval(*e.items[1]);
      }
      case Expr::Kind::Cond:
        if (truthy(eval(*e.items[1]))) return eval(*e.items[0]);
        return e.items[2] ? eval(*e.items[2]) : Value::undefined();
    }
    return Value::undefined();
  }
};

}  // namespace

Template::Template(const std::string& source, std::string where)
    : body_(parse_template(source, where)), where_(std::move(where)) {}

std::string Template::render(const Dict& variables) const {
  Renderer r(where_, variables);
  std::string out;
  Renderer::Flow f = r.render(body_, out);
  if (f != Renderer::Flow::Normal) throw Error(where_ + ": break or continue outside a for loop");
  return out;
}

}  // namespace grpo::text::jinja
