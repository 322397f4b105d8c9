// `grpo tokenize`: token ids of each input line (or text of each id line with --decode).
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "text/tokenizer.h"
#include "util/error.h"
#include "util/json.h"

namespace grpo::cli {

int run_tokenize(const TokenizeArgs& args) {
  text::Tokenizer tok = text::Tokenizer::load(args.tokenizer);
  std::ifstream in(args.input, std::ios::binary);
  if (!in) throw Error(args.input + ": cannot open");
  std::string line, out;
  for (int64_t lineno = 1; std::getline(in, line); ++lineno) {
    if (args.decode) {
      std::istringstream ss(line);
      std::vector<int32_t> ids;
      std::string word;
      while (ss >> word) {
        try {
          size_t used = 0;
          long v = std::stol(word, &used);
          if (used != word.size()) throw std::invalid_argument(word);
          if (v < 0 || v >= tok.vocab_size()) throw Error(args.input + ":" + std::to_string(lineno) + ": id " + word + " is outside the vocabulary");
          ids.push_back((int32_t)v);
        } catch (const std::logic_error&) {
          throw Error(args.input + ":" + std::to_string(lineno) + ": '" + word + "' is not a token id");
        }
      }
      std::string text = tok.decode(ids);
      out += (args.jsonl ? nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) : text) + "\n";
    } else {
      std::string text = line;
      if (args.jsonl) {
        try {
          auto j = parse_json(line, args.input + ":" + std::to_string(lineno));
          if (!j.is_string()) throw Error(args.input + ":" + std::to_string(lineno) + ": expected a JSON string");
          text = j.get<std::string>();
        } catch (const nlohmann::json::exception& e) {
          throw Error(args.input + ":" + std::to_string(lineno) + ": not a JSON string: " + e.what());
        }
      }
      auto ids = tok.encode(text, !args.no_special_tokens);
      for (size_t i = 0; i < ids.size(); ++i) {
        if (i) out += ' ';
        out += std::to_string(ids[i]);
      }
      out += '\n';
    }
    if (out.size() > (1 << 20)) {
      std::cout << out;
      out.clear();
    }
  }
  std::cout << out;
  std::cout.flush();
  return 0;
}

}  // namespace grpo::cli
