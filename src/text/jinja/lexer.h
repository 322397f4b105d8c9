// Reading template text: the text and tags of a template with the whitespace rules transformers
// renders chat templates under (trim_blocks and lstrip_blocks on; `-` and `+` on tags), and the
// tokens inside one tag. Errors name the template line.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace grpo::text::jinja {

struct Chunk {
  enum class Type { Text, Expr, Stmt } type;
  std::string body;
  int line;
};

struct Tok {
  enum class Type { Name, Int, Float, Str, Op, End } type;
  std::string s;
  int64_t i = 0;
  double f = 0;
  int line = 0;
};

// The template as text, {{ expression }} and {% statement %} chunks (comments dropped), line ends
// normalised and one final newline dropped, as Jinja reads a template.
std::vector<Chunk> scan(const std::string& source, const std::string& where);

// The tokens of one tag's inside, starting at template line `line`, ending with an End token.
std::vector<Tok> tokenize(const std::string& s, int line, const std::string& where);

}  // namespace grpo::text::jinja
