#include "trainer/dataset.h"

#include <cstdio>
#include <random>
#include <set>

#include "text/prompt_templates.h"
#include "util/error.h"
#include "util/jsonl.h"

namespace grpo::trainer {

namespace {

using Pair = std::pair<int64_t, int64_t>;

// `count` problems "a+b=" -> "a+b" with `digits`-digit operands, none of them in `avoid`, each once.
std::vector<Example> addition(int digits, int64_t count, uint64_t seed, const std::set<Pair>& avoid, std::set<Pair>& used) {
  std::mt19937_64 rng(seed);
  int64_t hi = 1;
  for (int d = 0; d < digits; ++d) hi *= 10;
  std::vector<Example> out;
  for (int64_t tries = 0; (int64_t)out.size() < count && tries < count * 50; ++tries) {
    int64_t a = rng() % hi, b = rng() % hi;
    if (avoid.count({a, b}) || !used.insert({a, b}).second) continue;
    out.push_back({std::to_string(a) + "+" + std::to_string(b) + "=", std::to_string(a + b), nlohmann::json::object()});
  }
  return out;
}

std::string trimmed(std::string s) {
  s.erase(0, s.find_first_not_of(" \t\n"));
  s.erase(s.find_last_not_of(" \t\n") + 1);
  return s;
}

// The text of a conversation's last user message (what logs and rejection-sampling output name).
std::string last_user_text(const nlohmann::json& messages) {
  for (auto it = messages.rbegin(); it != messages.rend(); ++it)
    if (it->is_object() && it->value("role", "") == "user" && it->contains("content") && (*it)["content"].is_string())
      return (*it)["content"].get<std::string>();
  return "";
}

bool is_conversation(const nlohmann::json& v) {
  if (!v.is_array() || v.empty()) return false;
  for (const auto& m : v)
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) return false;
  return true;
}

std::vector<Example> read_examples(const DataSettings& d, const std::string& file) {
  std::vector<Example> out;
  std::vector<std::string> bad;  // where, for the first 10
  int64_t bad_rows = 0;
  for_each_jsonl_object(file, [&](const nlohmann::json& row, const std::string& where) {
    const bool text_prompt = row.contains(d.prompt_field) && row[d.prompt_field].is_string();
    const bool chat_prompt = row.contains(d.prompt_field) && is_conversation(row[d.prompt_field]);
    // A whole conversation to learn (sft): no prompt or answer field needed.
    const bool conversation = !row.contains(d.prompt_field) && row.contains(d.messages_field) &&
                              is_conversation(row[d.messages_field]) && d.answer_field == d.completion_field;
    bool ok = conversation || ((text_prompt || chat_prompt) && row.contains(d.answer_field));
    std::string answer;
    if (ok && row.contains(d.answer_field)) {
      const auto& ans = row[d.answer_field];
      answer = ans.is_string() ? ans.get<std::string>() : ans.dump();
      if (!d.answer_delimiter.empty()) {
        size_t at = answer.rfind(d.answer_delimiter);
        ok = at != std::string::npos;
        if (ok) answer = trimmed(answer.substr(at + d.answer_delimiter.size()));
        ok = ok && !answer.empty();
      }
    }
    if (!ok) {
      if (++bad_rows <= 10) bad.push_back(where);
      return;
    }
    Example ex;
    ex.where = where;
    ex.answer = answer;
    if (text_prompt) {
      ex.prompt = row[d.prompt_field].get<std::string>();
    } else {
      const nlohmann::json& m = conversation ? row[d.messages_field] : row[d.prompt_field];
      ex.messages = nlohmann::ordered_json::parse(m.dump());
      ex.prompt = last_user_text(m);
    }
    for (const auto& [k, v] : row.items())
      if (k != d.prompt_field && k != d.answer_field && !(conversation && k == d.messages_field)) ex.metadata[k] = v;
    out.push_back(std::move(ex));
  });
  const std::string needs = "'" + d.prompt_field + "' (text or messages) and '" + d.answer_field + "'" +
                            (d.answer_delimiter.empty() ? "" : " with an answer after '" + d.answer_delimiter + "'");
  if (bad_rows > 0) {
    std::string where;
    for (auto& b : bad) where += (where.empty() ? "" : ", ") + b;
    fprintf(stderr, "grpo train: %lld row%s of %s lack%s %s and %s skipped (%s%s)\n", (long long)bad_rows,
            bad_rows == 1 ? "" : "s", file.c_str(), bad_rows == 1 ? "s" : "", needs.c_str(), bad_rows == 1 ? "is" : "are",
            where.c_str(), bad_rows > 10 ? ", ..." : "");
  }
  if (out.empty()) throw Error(file + ": no usable rows (each needs " + needs + ")");
  return out;
}

}  // namespace

Dataset load_dataset(const DataSettings& d, const std::string& recipe_path) {
  Dataset out;
  if (d.task == Task::Addition || d.task == Task::AdditionCot) {
    std::set<Pair> eval_pairs, train_pairs;
    out.eval = addition(d.task_digits, d.eval_size, d.data_seed + 7777, {}, eval_pairs);
    out.train = addition(d.task_digits, d.train_size, d.data_seed, eval_pairs, train_pairs);
    if (out.train.empty()) throw Error(recipe_path + ": key 'train_size': no addition problems left to train on");
    if (d.task == Task::AdditionCot) {  // half of the worked solutions check their sum (a style the
      std::mt19937_64 rng(d.data_seed + 55);  // built-in preference pairs favour)
      for (auto* part : {&out.train, &out.eval})
        for (Example& ex : *part) {
          const size_t plus = ex.prompt.find('+');
          ex.completion = addition_solution(std::stoll(ex.prompt.substr(0, plus)), std::stoll(ex.prompt.substr(plus + 1)),
                                            rng() % 2 == 0);
        }
    }
    if (d.general_share > 0) {  // built-in problems split between the sources "math" and "general"
      std::mt19937_64 rng(d.data_seed + 99);
      for (auto* part : {&out.train, &out.eval})
        for (Example& ex : *part)
          ex.metadata["data_source"] = (double)(rng() % 1000000) / 1e6 < d.general_share ? "general" : "math";
    }
  } else {
    out.train = read_examples(d, d.train_file);
    if (!d.eval_file.empty()) out.eval = read_examples(d, d.eval_file);
  }
  return out;
}

std::string addition_solution(int64_t a, int64_t b, bool check) {
  std::string steps;
  int64_t carry = 0;
  for (int64_t x = a, y = b; x > 0 || y > 0 || steps.empty(); x /= 10, y /= 10) {
    const int64_t da = x % 10, db = y % 10, s = da + db + carry;
    const bool last = x < 10 && y < 10;
    steps += std::to_string(da) + "+" + std::to_string(db) + (carry ? "+1" : "") + "=" + std::to_string(s);
    if (!last) steps += s >= 10 ? ", write " + std::to_string(s % 10) + " carry 1" : ", write " + std::to_string(s);
    else steps += ", write " + std::to_string(s);
    steps += "\n";
    carry = s >= 10 ? 1 : 0;
    if (last) break;
  }
  if (check) steps += "check: " + std::to_string(a + b) + "-" + std::to_string(b) + "=" + std::to_string(a) + "\n";
  return "<think>\n" + steps + "</think>\n<answer>\n" + std::to_string(a + b) + "\n</answer>";
}

std::string apply_template(const DataSettings& d, const std::string& prompt) {
  std::string t = d.prompt_template == "r1_zero" ? text::kR1ZeroTemplate : d.prompt_template;
  size_t p = t.find("{prompt}");
  if (p == std::string::npos) return t + prompt;
  return t.substr(0, p) + prompt + t.substr(p + 8);
}

PromptOrder::PromptOrder(size_t size, bool shuffle, uint64_t seed) : size_(size), shuffle_(shuffle), seed_(seed) {
  if (size == 0) throw Error("no training examples");
}

size_t PromptOrder::at(int64_t position) {
  const int64_t epoch = position / (int64_t)size_;
  const size_t i = (size_t)(position % (int64_t)size_);
  if (!shuffle_) return i;
  if (epoch != epoch_) {  // Fisher-Yates with our own draws: the same order on every platform
    std::mt19937_64 rng(seed_ * 1000003 + (uint64_t)epoch);
    permutation_.resize(size_);
    for (size_t k = 0; k < size_; ++k) permutation_[k] = k;
    for (size_t k = size_ - 1; k > 0; --k) std::swap(permutation_[k], permutation_[rng() % (k + 1)]);
    epoch_ = epoch;
  }
  return permutation_[i];
}

std::string drop_prompts_past_context(std::vector<Example>& examples, int64_t context,
                                      const std::function<int64_t(const Example&)>& length) {
  std::vector<Example> kept;
  std::string named;
  int64_t dropped = 0;
  for (auto& ex : examples) {
    const int64_t n = length(ex);
    if (n < context) {
      kept.push_back(std::move(ex));
      continue;
    }
    if (++dropped <= 10)
      named += (named.empty() ? "" : ", ") + (ex.where.empty() ? std::string("built-in") : ex.where) + " (" +
               std::to_string(n) + " tokens)";
  }
  examples = std::move(kept);
  if (!dropped) return "";
  return std::to_string(dropped) + " prompt" + (dropped == 1 ? "" : "s") + " longer than the context of " +
         std::to_string(context) + " tokens skipped: " + named + (dropped > 10 ? ", ..." : "");
}

}  // namespace grpo::trainer
