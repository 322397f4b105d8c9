// A parsed Jinja template and its renderer. Scoping follows Jinja: a for loop's body and a macro
// call have their own variables (which is why templates use namespace() to carry state out of a
// loop); if blocks do not. Rendering is bounded: a template that loops or nests past the limits
// below is an error, not a hang.
#pragma once

#include <string>

#include "text/jinja/ast.h"

namespace grpo::text::jinja {

class Template {
 public:
  // `where` names the template in errors. Throws grpo::Error naming the line of an unsupported
  // or malformed construct.
  Template(const std::string& source, std::string where);

  // Renders with `variables` as the template's globals (messages, add_generation_prompt, ...).
  std::string render(const Dict& variables) const;

  static constexpr size_t kMaxOutputBytes = 64u << 20;
  static constexpr int kMaxDepth = 256;  // nested macro calls
  static constexpr int64_t kMaxIterations = 1'000'000;  // for-loop bodies, all loops together

 private:
  Body body_;
  std::string where_;
};

}  // namespace grpo::text::jinja
