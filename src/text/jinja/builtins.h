// The operators, filters, tests, methods and global functions that chat templates call, with the
// results Python and Jinja give. Each throws std::runtime_error on misuse; the interpreter adds the
// template line.
#pragma once

#include <string>

#include "text/jinja/value.h"

namespace grpo::text::jinja {

// + - * / // % ** ~ == != < > <= >= in, "not in".
Value binary_op(const std::string& op, const Value& a, const Value& b);
Value apply_filter(const std::string& name, const Value& v, const Args& args);
bool apply_test(const std::string& name, const Value& v, const Args& args);
// obj.name as a bound method (str.strip, dict.items, ...), or an undefined value if there is none.
Value method(const Value& obj, const std::string& name);
// v[key] for lists, strings and dicts; an undefined value when absent (as Jinja's getitem).
Value subscript(const Value& v, const Value& key);
// v[start:stop:step] (absent parts undefined).
Value slice(const Value& v, const Value& start, const Value& stop, const Value& step);
// The items a for loop visits: a list's items, a dict's keys, a string's characters.
List iterate(const Value& v);
// raise_exception, namespace, range, dict, strftime_now.
Dict globals();

}  // namespace grpo::text::jinja
