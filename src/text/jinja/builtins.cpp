#include "text/jinja/builtins.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <ctime>
#include <stdexcept>

#include "text/jinja/python_str.h"

namespace grpo::text::jinja {
namespace {

using K = Value::Kind;

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what); }

// The i-th positional argument, else the keyword `name`, else `fallback`.
Value arg(const Args& a, size_t i, const char* name, Value fallback = Value::undefined()) {
  if (i < a.positional.size()) return a.positional[i];
  for (const auto& [k, v] : a.named)
    if (k == name) return v;
  return fallback;
}

int64_t as_int(const Value& v, const char* what) {
  if (v.kind == K::Int) return v.i;
  if (v.kind == K::Bool) return v.b;
  fail(std::string(what) + " must be an integer, not " + type_name(v));
}

const std::string& as_str(const Value& v, const char* what) {
  if (v.kind != K::String) fail(std::string(what) + " must be a string, not " + type_name(v));
  return v.s;
}

// A dotted attribute path ("function.name") of an item, as selectattr and map look it up.
Value attribute_of(const Value& item, const std::string& path) {
  Value v = item;
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t dot = path.find('.', pos);
    std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    if (v.kind == K::Dict || v.kind == K::Namespace) {
      const Value* f = v.dict->find(part);
      v = f ? *f : Value::undefined(part);
    } else if (v.kind == K::List && !part.empty() && part.size() < 18 && std::all_of(part.begin(), part.end(), ::isdigit)) {
      v = subscript(v, Value::integer(std::stoll(part)));
    } else {
      return Value::undefined(part);
    }
    if (dot == std::string::npos) break;
    pos = dot + 1;
  }
  return v;
}

int compare(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) return a.as_double() < b.as_double() ? -1 : a.as_double() > b.as_double() ? 1 : 0;
  if (a.kind == K::String && b.kind == K::String) return a.s < b.s ? -1 : a.s > b.s ? 1 : 0;
  fail("'<' is not supported between " + type_name(a) + " and " + type_name(b));
}

Args tail_args(const Args& a, size_t from) {
  Args out;
  for (size_t i = from; i < a.positional.size(); ++i) out.positional.push_back(a.positional[i]);
  out.named = a.named;
  return out;
}

Value select_items(const Value& v, const Args& a, bool by_attribute, bool keep) {
  List out;
  for (const Value& item : iterate(v)) {
    Value subject = item;
    size_t next = 0;
    if (by_attribute) subject = attribute_of(item, as_str(arg(a, next++, "attribute"), "attribute"));
    bool ok;
    if (next < a.positional.size()) ok = apply_test(as_str(a.positional[next], "test"), subject, tail_args(a, next + 1));
    else ok = truthy(subject);
    if (ok == keep) out.push_back(item);
  }
  return Value::make_list(std::move(out));
}

}  // namespace

List iterate(const Value& v) {
  switch (v.kind) {
    case K::Undefined: return {};
    case K::List: return *v.list;
    case K::Dict: {
      List keys;
      for (const auto& kv : v.dict->items) keys.push_back(Value::string(kv.first));
      return keys;
    }
    case K::String: {
      List chars;
      auto cps = code_points(v.s);
      for (size_t i = 0; i < cps.size(); ++i) chars.push_back(Value::string(from_code_points(cps, i, i + 1)));
      return chars;
    }
    default: fail("'" + type_name(v) + "' object is not iterable");
  }
}

Value subscript(const Value& v, const Value& key) {
  if (v.kind == K::Undefined) fail("'" + v.s + "' is undefined");
  if (v.kind == K::Dict || v.kind == K::Namespace) {
    if (key.kind != K::String) return Value::undefined();
    const Value* f = v.dict->find(key.s);
    return f ? *f : Value::undefined(key.s);
  }
  if ((v.kind == K::List || v.kind == K::String) && (key.kind == K::Int || key.kind == K::Bool)) {
    int64_t i = key.kind == K::Bool ? key.b : key.i;
    if (v.kind == K::List) {
      int64_t n = (int64_t)v.list->size();
      if (i < 0) i += n;
      return i >= 0 && i < n ? (*v.list)[(size_t)i] : Value::undefined();
    }
    auto cps = code_points(v.s);
    int64_t n = (int64_t)cps.size();
    if (i < 0) i += n;
    return i >= 0 && i < n ? Value::string(from_code_points(cps, (size_t)i, (size_t)i + 1)) : Value::undefined();
  }
  if (key.kind == K::String) return method(v, key.s);
  return Value::undefined();
}

Value slice(const Value& v, const Value& start, const Value& stop, const Value& step) {
  int64_t st = step.is_undefined() || step.is_none() ? 1 : as_int(step, "slice step");
  if (st == 0) fail("slice step cannot be zero");
  std::vector<uint32_t> cps;
  int64_t n;
  if (v.kind == K::List) n = (int64_t)v.list->size();
  else if (v.kind == K::String) n = (int64_t)(cps = code_points(v.s)).size();
  else fail("'" + type_name(v) + "' object is not subscriptable");
  auto bound = [&](const Value& x, int64_t dflt) {
    if (x.is_undefined() || x.is_none()) return dflt;
    int64_t i = as_int(x, "slice index");
    if (i < 0) i += n;
    if (st > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  int64_t b = bound(start, st > 0 ? 0 : n - 1), e = bound(stop, st > 0 ? n : -1);
  List items;
  std::string text;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) {
    if (v.kind == K::List) items.push_back((*v.list)[(size_t)i]);
    else text += from_code_points(cps, (size_t)i, (size_t)i + 1);
  }
  return v.kind == K::List ? Value::make_list(std::move(items)) : Value::string(text);
}

Value binary_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return Value::boolean(equal(a, b));
  if (op == "!=") return Value::boolean(!equal(a, b));
  if (op == "~") return Value::string(to_text(a) + to_text(b));
  if (op == "in" || op == "not in") {
    bool found = false;
    if (b.kind == K::String) found = b.s.find(as_str(a, "the left operand of 'in' a string")) != std::string::npos;
    else if (b.kind == K::List) found = std::any_of(b.list->begin(), b.list->end(), [&](const Value& x) { return equal(a, x); });
    else if (b.kind == K::Dict) found = a.kind == K::String && b.dict->find(a.s);
    else if (b.kind == K::Undefined) fail("'" + b.s + "' is undefined");
    else fail("argument of type '" + type_name(b) + "' is not iterable");
    return Value::boolean(op == "in" ? found : !found);
  }
  if (op == "<") return Value::boolean(compare(a, b) < 0);
  if (op == ">") return Value::boolean(compare(a, b) > 0);
  if (op == "<=") return Value::boolean(compare(a, b) <= 0);
  if (op == ">=") return Value::boolean(compare(a, b) >= 0);
  if (a.kind == K::Undefined || b.kind == K::Undefined)
    fail("'" + (a.kind == K::Undefined ? a.s : b.s) + "' is undefined");
  if (op == "+") {
    if (a.kind == K::String && b.kind == K::String) return Value::string(a.s + b.s);
    if (a.kind == K::List && b.kind == K::List) {
      List out = *a.list;
      out.insert(out.end(), b.list->begin(), b.list->end());
      return Value::make_list(std::move(out));
    }
  }
  if (op == "*") {
    if ((a.kind == K::String || a.kind == K::List) && (b.kind == K::Int || b.kind == K::Bool)) {
      int64_t n = std::max<int64_t>(0, as_int(b, "repeat count"));
      const size_t unit = a.kind == K::String ? a.s.size() : a.list->size() * 16;
      if (unit > 0 && (uint64_t)n > (64u << 20) / unit) fail("repetition past 64 MiB");
      if (a.kind == K::String) {
        std::string out;
        for (int64_t i = 0; i < n; ++i) out += a.s;
        return Value::string(out);
      }
      List out;
      for (int64_t i = 0; i < n; ++i) out.insert(out.end(), a.list->begin(), a.list->end());
      return Value::make_list(std::move(out));
    }
  }
  if (!a.is_number() || !b.is_number())
    fail("unsupported operand types for " + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
  bool ints = a.kind != K::Float && b.kind != K::Float;
  int64_t x = ints ? (a.kind == K::Bool ? a.b : a.i) : 0, y = ints ? (b.kind == K::Bool ? b.b : b.i) : 0;
  double fx = a.as_double(), fy = b.as_double();
  int64_t r = 0;
  auto overflow = [&]() -> Value { fail("integer overflow in " + op + " (past 64 bits)"); };
  if (op == "+") return ints ? (__builtin_add_overflow(x, y, &r) ? overflow() : Value::integer(r)) : Value::number(fx + fy);
  if (op == "-") return ints ? (__builtin_sub_overflow(x, y, &r) ? overflow() : Value::integer(r)) : Value::number(fx - fy);
  if (op == "*") return ints ? (__builtin_mul_overflow(x, y, &r) ? overflow() : Value::integer(r)) : Value::number(fx * fy);
  if (op == "/") {
    if (fy == 0) fail("division by zero");
    return Value::number(fx / fy);
  }
  if (op == "//" || op == "%") {
    if (fy == 0) fail(op == "//" ? "integer division or modulo by zero" : "modulo by zero");
    if (ints) {
      if (x == INT64_MIN && y == -1) return overflow();
      int64_t q = x / y, r = x % y;
      if (r != 0 && ((r < 0) != (y < 0))) {
        --q;
        r += y;
      }
      return Value::integer(op == "//" ? q : r);
    }
    double q = std::floor(fx / fy);
    return Value::number(op == "//" ? q : fx - q * fy);
  }
  if (op == "**") {
    if (ints && y >= 0) {  // by squaring: O(log y) steps
      int64_t p = 1, base = x;
      for (int64_t e = y; e > 0; e >>= 1) {
        if ((e & 1) && __builtin_mul_overflow(p, base, &p)) return overflow();
        if (e > 1 && __builtin_mul_overflow(base, base, &base)) return overflow();
      }
      return Value::integer(p);
    }
    return Value::number(std::pow(fx, fy));
  }
  fail("unknown operator " + op);
}

bool apply_test(const std::string& name, const Value& v, const Args& a) {
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.kind == K::String;
  if (name == "number") return v.kind == K::Int || v.kind == K::Float || v.kind == K::Bool;
  if (name == "integer") return v.kind == K::Int;
  if (name == "float") return v.kind == K::Float;
  if (name == "boolean") return v.kind == K::Bool;
  if (name == "true") return v.kind == K::Bool && v.b;
  if (name == "false") return v.kind == K::Bool && !v.b;
  if (name == "mapping") return v.kind == K::Dict;
  if (name == "iterable") return v.kind == K::List || v.kind == K::Dict || v.kind == K::String || v.is_undefined();
  if (name == "sequence") return v.kind == K::List || v.kind == K::Dict || v.kind == K::String;
  if (name == "callable") return v.kind == K::Function;
  if (name == "equalto" || name == "eq" || name == "==" || name == "sameas") return equal(v, arg(a, 0, "other"));
  if (name == "ne" || name == "!=") return !equal(v, arg(a, 0, "other"));
  if (name == "odd" || name == "even") return (as_int(v, "the value") % 2 != 0) == (name == "odd");
  if (name == "divisibleby") return as_int(v, "the value") % as_int(arg(a, 0, "num"), "the divisor") == 0;
  if (name == "in") return truthy(binary_op("in", v, arg(a, 0, "seq")));
  if (name == "lower") return v.kind == K::String && ascii_lower(v.s) == v.s;
  if (name == "upper") return v.kind == K::String && ascii_upper(v.s) == v.s;
  if (name == "gt" || name == "lt" || name == "ge" || name == "le") {
    int c = compare(v, arg(a, 0, "other"));
    return name == "gt" ? c > 0 : name == "lt" ? c < 0 : name == "ge" ? c >= 0 : c <= 0;
  }
  fail("no test named '" + name + "'");
}

Value apply_filter(const std::string& name, const Value& v, const Args& a) {
  auto text = [&]() { return to_text(v); };
  if (name == "trim") return Value::string(py_strip(text(), arg(a, 0, "chars"), true, true));
  if (name == "length" || name == "count") {
    if (v.kind == K::String) return Value::integer((int64_t)code_points(v.s).size());
    if (v.kind == K::List) return Value::integer((int64_t)v.list->size());
    if (v.kind == K::Dict) return Value::integer((int64_t)v.dict->items.size());
    if (v.kind == K::Undefined) return Value::integer(0);
    fail("object of type '" + type_name(v) + "' has no len()");
  }
  if (name == "tojson") {
    Value indent = arg(a, 0, "indent"), seps = arg(a, 2, "separators"), sort = arg(a, 3, "sort_keys");
    Value ensure_ascii = arg(a, 1, "ensure_ascii");
    if (truthy(ensure_ascii)) fail("tojson(ensure_ascii=True) is not supported");
    std::string item_sep, key_sep;
    if (seps.kind == K::List) {
      if (seps.list->size() != 2) fail("tojson separators must be a pair");
      item_sep = as_str((*seps.list)[0], "separator");
      key_sep = as_str((*seps.list)[1], "separator");
    }
    int ind = indent.is_undefined() || indent.is_none() ? -1 : (int)as_int(indent, "indent");
    return Value::string(to_json(v, ind, truthy(sort), seps.kind == K::List ? &item_sep : nullptr,
                                 seps.kind == K::List ? &key_sep : nullptr));
  }
  if (name == "upper") return Value::string(ascii_upper(text()));
  if (name == "lower") return Value::string(ascii_lower(text()));
  if (name == "capitalize") return Value::string(py_capitalize(text()));
  if (name == "title") return Value::string(title_case(text()));
  if (name == "string") return Value::string(text());
  if (name == "safe") return v;
  if (name == "first" || name == "last") {
    List items = iterate(v);
    if (items.empty()) return Value::undefined();
    return name == "first" ? items.front() : items.back();
  }
  if (name == "join") {
    std::string sep = arg(a, 0, "d", Value::string("")).s;
    Value attr = arg(a, 1, "attribute");
    std::string out;
    bool first = true;
    for (const Value& item : iterate(v)) {
      out += (first ? "" : sep) + to_text(attr.kind == K::String ? attribute_of(item, attr.s) : item);
      first = false;
    }
    return Value::string(out);
  }
  if (name == "default" || name == "d") {
    bool boolean = truthy(arg(a, 1, "boolean", Value::boolean(false)));
    if (v.is_undefined() || (boolean && !truthy(v))) return arg(a, 0, "default_value", Value::string(""));
    return v;
  }
  if (name == "items") {
    if (v.is_undefined()) return Value::make_list();
    if (v.kind != K::Dict) fail("items of a " + type_name(v) + ", not a dict");
    List out;
    for (const auto& [k, x] : v.dict->items) out.push_back(Value::make_list({Value::string(k), x}));
    return Value::make_list(std::move(out));
  }
  if (name == "list") return Value::make_list(iterate(v));
  if (name == "reverse") {
    if (v.kind == K::String) return slice(v, Value::undefined(), Value::undefined(), Value::integer(-1));
    List items = iterate(v);
    std::reverse(items.begin(), items.end());
    return Value::make_list(std::move(items));
  }
  if (name == "int") {
    if (v.kind == K::Int) return v;
    if (v.kind == K::Bool) return Value::integer(v.b);
    if (v.kind == K::Float) return Value::integer((int64_t)v.f);
    if (v.kind == K::String) {
      try {
        size_t used = 0;
        std::string s = py_strip(v.s, Value::undefined(), true, true);
        int64_t x = std::stoll(s, &used);
        if (used == s.size()) return Value::integer(x);
        return Value::integer((int64_t)std::stod(s));
      } catch (const std::exception&) {
      }
    }
    return arg(a, 0, "default", Value::integer(0));
  }
  if (name == "float") {
    if (v.is_number()) return Value::number(v.as_double());
    if (v.kind == K::String) {
      try {
        return Value::number(std::stod(v.s));
      } catch (const std::exception&) {
      }
    }
    return arg(a, 0, "default", Value::number(0));
  }
  if (name == "abs") {
    if (v.kind == K::Int) return Value::integer(v.i < 0 ? -v.i : v.i);
    if (v.is_number()) return Value::number(std::fabs(v.as_double()));
    fail("bad operand type for abs(): '" + type_name(v) + "'");
  }
  if (name == "replace") {
    Value count = arg(a, 2, "count");
    return Value::string(py_replace(text(), as_str(arg(a, 0, "old"), "old"), as_str(arg(a, 1, "new"), "new"),
                                    count.is_undefined() || count.is_none() ? -1 : as_int(count, "count")));
  }
  if (name == "selectattr" || name == "rejectattr") return select_items(v, a, true, name == "selectattr");
  if (name == "select" || name == "reject") return select_items(v, a, false, name == "select");
  if (name == "map") {
    List out;
    Value attr = arg(a, 99, "attribute");
    for (const Value& item : iterate(v)) {
      if (attr.kind == K::String) {
        Value x = attribute_of(item, attr.s);
        out.push_back(x.is_undefined() ? arg(a, 99, "default", x) : x);
      } else {
        out.push_back(apply_filter(as_str(arg(a, 0, "filter"), "filter name"), item, tail_args(a, 1)));
      }
    }
    return Value::make_list(std::move(out));
  }
  if (name == "unique") {
    List out;
    for (const Value& item : iterate(v))
      if (std::none_of(out.begin(), out.end(), [&](const Value& x) { return equal(x, item); })) out.push_back(item);
    return Value::make_list(std::move(out));
  }
  if (name == "indent") {
    Value w = arg(a, 0, "width", Value::integer(4));
    std::string pad = w.kind == K::String ? w.s : std::string((size_t)as_int(w, "width"), ' ');
    bool first = truthy(arg(a, 1, "first")), blank = truthy(arg(a, 2, "blank"));
    std::string s = text(), out;
    size_t pos = 0;
    bool is_first = true;
    while (true) {
      size_t nl = s.find('\n', pos);
      std::string line = s.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
      bool indent_it = is_first ? first : (blank || !py_strip(line, Value::undefined(), true, true).empty());
      out += (indent_it ? pad : "") + line;
      if (nl == std::string::npos) break;
      out += '\n';
      pos = nl + 1;
      is_first = false;
    }
    return Value::string(out);
  }
  fail("no filter named '" + name + "'");
}

Value method(const Value& obj, const std::string& name) {
  auto bind = [&](std::function<Value(const Args&)> f) { return Value::function(name, std::move(f)); };
  if (obj.kind == K::String) {
    const std::string s = obj.s;
    if (name == "strip" || name == "lstrip" || name == "rstrip")
      return bind([s, name](const Args& a) {
        return Value::string(py_strip(s, arg(a, 0, "chars"), name != "rstrip", name != "lstrip"));
      });
    if (name == "split")
      return bind([s](const Args& a) {
        Value m = arg(a, 1, "maxsplit");
        return py_split(s, arg(a, 0, "sep"), m.is_undefined() ? -1 : as_int(m, "maxsplit"));
      });
    if (name == "startswith" || name == "endswith")
      return bind([s, name](const Args& a) { return Value::boolean(starts_or_ends(s, arg(a, 0, "prefix"), name == "startswith")); });
    if (name == "upper") return bind([s](const Args&) { return Value::string(ascii_upper(s)); });
    if (name == "lower") return bind([s](const Args&) { return Value::string(ascii_lower(s)); });
    if (name == "title") return bind([s](const Args&) { return Value::string(title_case(s)); });
    if (name == "capitalize") return bind([s](const Args&) { return Value::string(py_capitalize(s)); });
    if (name == "replace")
      return bind([s](const Args& a) {
        Value c = arg(a, 2, "count");
        return Value::string(py_replace(s, as_str(arg(a, 0, "old"), "old"), as_str(arg(a, 1, "new"), "new"),
                                        c.is_undefined() ? -1 : as_int(c, "count")));
      });
    if (name == "find")
      return bind([s](const Args& a) {
        size_t at = s.find(as_str(arg(a, 0, "sub"), "sub"));
        return Value::integer(at == std::string::npos ? -1 : (int64_t)code_points(s.substr(0, at)).size());
      });
    if (name == "join")
      return bind([s](const Args& a) {
        std::string out;
        bool first = true;
        for (const Value& x : iterate(arg(a, 0, "iterable"))) {
          out += (first ? "" : s) + as_str(x, "joined item");
          first = false;
        }
        return Value::string(out);
      });
    return Value::undefined(name);
  }
  if (obj.kind == K::Dict) {
    auto d = obj.dict;
    if (name == "items")
      return bind([obj](const Args&) { return apply_filter("items", obj, {}); });
    if (name == "keys") return bind([obj](const Args&) { return Value::make_list(iterate(obj)); });
    if (name == "values")
      return bind([d](const Args&) {
        List out;
        for (const auto& kv : d->items) out.push_back(kv.second);
        return Value::make_list(std::move(out));
      });
    if (name == "get")
      return bind([d](const Args& a) {
        const Value* f = d->find(as_str(arg(a, 0, "key"), "key"));
        return f ? *f : arg(a, 1, "default", Value::none());
      });
  }
  return Value::undefined(name);
}

Dict globals() {
  Dict g;
  g.set("raise_exception", Value::function("raise_exception", [](const Args& a) -> Value {
          throw std::runtime_error("the template raised an error: " + to_text(arg(a, 0, "message")));
        }));
  g.set("namespace", Value::function("namespace", [](const Args& a) {
          Dict d;
          if (!a.positional.empty()) {
            if (a.positional[0].kind != K::Dict) fail("namespace() takes a dict or keyword arguments");
            d = *a.positional[0].dict;
          }
          for (const auto& [k, v] : a.named) d.set(k, v);
          return Value::make_namespace(std::move(d));
        }));
  g.set("dict", Value::function("dict", [](const Args& a) {
          Dict d;
          if (!a.positional.empty() && a.positional[0].kind == K::Dict) d = *a.positional[0].dict;
          for (const auto& [k, v] : a.named) d.set(k, v);
          return Value::make_dict(std::move(d));
        }));
  g.set("range", Value::function("range", [](const Args& a) {
          int64_t start = 0, stop, step = 1;
          if (a.positional.size() == 1) {
            stop = as_int(a.positional[0], "range stop");
          } else if (a.positional.size() >= 2) {
            start = as_int(a.positional[0], "range start");
            stop = as_int(a.positional[1], "range stop");
            if (a.positional.size() > 2) step = as_int(a.positional[2], "range step");
          } else {
            fail("range() takes 1 to 3 arguments");
          }
          if (step == 0) fail("range() step must not be zero");
          List out;
          for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
            if (out.size() >= 100000) fail("range() longer than 100000 items");
            out.push_back(Value::integer(i));
            if (__builtin_add_overflow(i, step, &i)) break;
          }
          return Value::make_list(std::move(out));
        }));
  g.set("strftime_now", Value::function("strftime_now", [](const Args& a) {
          std::time_t now = std::time(nullptr);
          std::tm tm{};
          localtime_r(&now, &tm);
          char buf[256];
          size_t n = std::strftime(buf, sizeof buf, as_str(arg(a, 0, "format"), "format").c_str(), &tm);
          return Value::string(std::string(buf, n));
        }));
  return g;
}

}  // namespace grpo::text::jinja
