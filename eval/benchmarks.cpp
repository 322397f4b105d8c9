#include "eval/benchmarks.h"

#include "text/prompt_templates.h"
#include "util/error.h"
#include "util/files.h"
#include "util/jsonl.h"

namespace grpo::eval {

using json = nlohmann::json;

namespace {

std::string text_field(const json& row, const char* name, const std::string& where) {
  if (!row.contains(name) || !row[name].is_string()) throw Error(where + ": expected a text field '" + name + "'");
  return row[name].get<std::string>();
}


}  // namespace

Benchmark load_benchmark(const std::string& name, const std::string& data_dir) {
  Benchmark b;
  b.name = name;
  auto read = [&](const std::string& path, const std::function<Problem(const json&, const std::string&)>& f) {
    if (!file_exists(path))
      throw Error(path + ": benchmark file not found (--data-dir names the directory with the benchmark files)");
    for_each_jsonl_object(path, [&](const json& row, const std::string& where) {
      Problem p = f(row, where);
      p.where = where;
      b.problems.push_back(std::move(p));
    });
    if (b.problems.empty()) throw Error(path + ": no problems");
  };
  if (name == "gsm8k") {
    b.reward = "math";
    read(data_dir + "/gsm8k_test.jsonl", [](const json& r, const std::string& w) {
      std::string a = text_field(r, "answer", w);
      const size_t cut = a.rfind("####");
      if (cut == std::string::npos) throw Error(w + ": the answer has no '####' final answer");
      a = a.substr(cut + 4);
      a.erase(0, a.find_first_not_of(" \t"));
      return Problem{text_field(r, "question", w), a, json::object(), ""};
    });
  } else if (name == "math500") {
    b.reward = "math";
    read(data_dir + "/math500_test.jsonl", [](const json& r, const std::string& w) {
      return Problem{text_field(r, "problem", w), text_field(r, "answer", w), json::object(), ""};
    });
  } else if (name == "humaneval") {
    b.reward = "code";
    read(data_dir + "/humaneval.jsonl", [](const json& r, const std::string& w) {
      const std::string prompt = text_field(r, "prompt", w);
      return Problem{prompt, "", {{"prompt", prompt}, {"test", text_field(r, "test", w)},
                                  {"entry_point", text_field(r, "entry_point", w)}}, ""};
    });
  } else if (name == "mbpp") {
    b.reward = "code";
    read(data_dir + "/mbpp.jsonl", [](const json& r, const std::string& w) {
      if (!r.contains("test_list") || !r["test_list"].is_array()) throw Error(w + ": expected a list 'test_list'");
      std::string prompt = text_field(r, "text", w) + "\nYour code should pass these tests:\n";
      for (const auto& t : r["test_list"]) prompt += t.get<std::string>() + "\n";
      return Problem{prompt, "", {{"test_list", r["test_list"]}, {"test_setup_code", r.value("test_setup_code", "")}}, ""};
    });
  } else if (name.size() > 6 && name.substr(name.size() - 6) == ".jsonl") {
    bool code = false, math = false;
    read(name, [&](const json& r, const std::string& w) {
      Problem p;
      p.prompt = text_field(r, "prompt", w);
      if (r.contains("test")) {
        code = true;
        p.metadata = {{"test", text_field(r, "test", w)}, {"entry_point", text_field(r, "entry_point", w)}};
        if (r.contains("code_prompt")) p.metadata["prompt"] = r["code_prompt"];
      } else {
        math = true;
        p.reference = r.contains("answer") && r["answer"].is_number() ? r["answer"].dump() : text_field(r, "answer", w);
      }
      if (code && math) throw Error(w + ": every line must be math ({prompt, answer}) or code ({prompt, test, entry_point}), not both");
      return p;
    });
    b.reward = code ? "code" : "math";
  } else {
    throw Error("--benchmark '" + name + "': expected gsm8k, math500, humaneval, mbpp or a FILE.jsonl");
  }
  return b;
}

std::string format_prompt(const Benchmark& b, const Problem& p, const std::string& format) {
  if (format == "plain") return p.prompt;
  if (format == "r1") {
    if (b.reward == "code")
      return p.prompt + "\nAnswer with the complete program in one ```python fenced block.\n";
    std::string t = text::kR1ZeroTemplate;
    return t.replace(t.find("{prompt}"), 8, p.prompt);
  }
  if (format == "chat") {  // the user message; the model's chat template wraps it
    if (b.reward == "code") return p.prompt + "\nAnswer with the complete program in one ```python fenced block.";
    return p.prompt + "\nPlease reason step by step, and put your final answer within \\boxed{}.";
  }
  throw Error("--prompt-format '" + format + "': expected plain, r1 or chat");
}

}  // namespace grpo::eval
