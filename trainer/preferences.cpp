#include "trainer/preferences.h"

#include <algorithm>
#include <cstdio>
#include <random>

#include "util/error.h"
#include "util/jsonl.h"

namespace grpo::trainer {
namespace {

std::vector<PreferencePair> read_pairs(const DataSettings& d, const std::string& file) {
  std::vector<PreferencePair> out;
  std::vector<std::string> bad;
  int64_t bad_rows = 0;
  for_each_jsonl_object(file, [&](const nlohmann::json& row, const std::string& where) {
    auto text = [&](const std::string& k) { return row.contains(k) && row[k].is_string(); };
    if (!text(d.prompt_field) || !text(d.chosen_field) || !text(d.rejected_field)) {
      if (++bad_rows <= 10) bad.push_back(where);
      return;
    }
    PreferencePair p;
    p.prompt.prompt = row[d.prompt_field].get<std::string>();
    p.prompt.where = where;
    p.chosen = row[d.chosen_field].get<std::string>();
    p.rejected = row[d.rejected_field].get<std::string>();
    for (const auto& [k, v] : row.items())
      if (k != d.prompt_field && k != d.chosen_field && k != d.rejected_field) p.prompt.metadata[k] = v;
    out.push_back(std::move(p));
  });
  const std::string needs = "text fields '" + d.prompt_field + "', '" + d.chosen_field + "' and '" + d.rejected_field + "'";
  if (bad_rows > 0) {
    std::string where;
    for (auto& b : bad) where += (where.empty() ? "" : ", ") + b;
    fprintf(stderr, "grpo train: %lld row%s of %s without %s skipped (%s%s)\n", (long long)bad_rows, bad_rows == 1 ? "" : "s",
            file.c_str(), needs.c_str(), where.c_str(), bad_rows > 10 ? ", ..." : "");
  }
  if (out.empty()) throw Error(file + ": no usable rows (each needs " + needs + ")");
  return out;
}

// The built-in pairs: the worked solution that checks its sum is preferred to one of four worse
// answers, one of them the same solution without the check (a style preference, as a helpfulness
// reward model's, that the final RL stage can raise: half the cold-start solutions check).
std::vector<PreferencePair> addition_pairs(const std::vector<Example>& problems, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<PreferencePair> out;
  for (const Example& ex : problems) {
    const size_t plus = ex.prompt.find('+');
    const int64_t a = std::stoll(ex.prompt.substr(0, plus)), b = std::stoll(ex.prompt.substr(plus + 1));
    PreferencePair p;
    p.prompt = ex;
    p.chosen = addition_solution(a, b, true);
    const int64_t wrong = a + b + (rng() % 2 ? 1 : -1) * (rng() % 2 ? 1 : 10);
    switch (rng() % 4) {
      case 0: {  // the same work ending in a wrong sum, checked as if it were right
        std::string s = addition_solution(a, b);
        const std::string right = "</think>\n<answer>\n" + std::to_string(a + b) + "\n</answer>";
        p.rejected = s.replace(s.find(right), right.size(),
                               "check: " + std::to_string(wrong) + "-" + std::to_string(b) + "=" + std::to_string(wrong - b) +
                                   "\n</think>\n<answer>\n" + std::to_string(wrong) + "\n</answer>");
        break;
      }
      case 1: p.rejected = std::to_string(a + b); break;  // no reasoning format
      case 2: p.rejected = addition_solution(a, b); break;  // right, but no check
      default: {  // rambling to a wrong answer
        std::string ramble;
        for (uint64_t k = 0, n = 2 + rng() % 4; k < n; ++k) ramble += "hmm, let me think again\n";
        p.rejected = "<think>\n" + ramble + "</think>\n<answer>\n" + std::to_string(wrong) + "\n</answer>";
      }
    }
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace

PreferenceData load_preferences(const DataSettings& d, const std::string& recipe_path) {
  PreferenceData out;
  if (d.task != Task::Jsonl) {
    Dataset problems = load_dataset(d, recipe_path);
    out.train = addition_pairs(problems.train, d.data_seed);
    out.eval = addition_pairs(problems.eval, d.data_seed + 1);
    return out;
  }
  out.train = read_pairs(d, d.train_file);
  if (!d.eval_file.empty()) {
    out.eval = read_pairs(d, d.eval_file);
  } else if (out.train.size() >= 10) {
    std::mt19937_64 rng(d.data_seed);
    std::shuffle(out.train.begin(), out.train.end(), rng);
    const size_t held = out.train.size() / 10;
    out.eval.assign(out.train.end() - held, out.train.end());
    out.train.resize(out.train.size() - held);
  }
  return out;
}

}  // namespace grpo::trainer
