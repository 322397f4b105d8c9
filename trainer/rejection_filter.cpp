#include "trainer/rejection_filter.h"

#include <set>
#include <sstream>

namespace grpo::trainer {

namespace {

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

double component(const rewards::RewardResult& r, const std::string& name, bool* found) {
  if (name == "reward") {
    *found = true;
    return r.reward;
  }
  auto it = r.components.find(name);
  *found = it != r.components.end();
  return *found ? it->second : 0.0;
}

}  // namespace

double repeated_ngram_share(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  if (words.size() < 8) return 0;
  std::set<std::string> seen;
  size_t repeats = 0, total = 0;
  for (size_t i = 0; i + 4 <= words.size(); ++i) {
    std::string g = words[i] + ' ' + words[i + 1] + ' ' + words[i + 2] + ' ' + words[i + 3];
    ++total;
    if (!seen.insert(g).second) ++repeats;
  }
  return (double)repeats / (double)total;
}

bool has_repeated_paragraph(const std::string& text) {
  std::set<std::string> seen;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find("\n\n", start);
    if (end == std::string::npos) end = text.size();
    std::string p = trim(text.substr(start, end - start));
    if (p.size() >= 20 && !seen.insert(p).second) return true;
    start = end + 2;
  }
  return false;
}

std::string rejection_reason(const RejectionFilter& f, const Candidate& c) {
  if (!c.result.error.empty()) return "error";
  if (c.truncated && f.drop_truncated) return "truncated";
  if (f.min_tokens > 0 && c.tokens < f.min_tokens) return "too_short";
  if (f.max_tokens > 0 && c.tokens > f.max_tokens) return "too_long";
  if (f.require_correct) {
    bool found = false;
    double acc = component(c.result, "math", &found);
    if (!found) acc = c.result.reward;
    if (acc < 1) return "incorrect";
  }
  for (const auto& [name, min] : f.min_rewards) {
    bool found = false;
    double v = component(c.result, name, &found);
    if (!found || v < min) return "reward:" + name;
  }
  if (!f.language.empty() && c.language_share < f.min_language_consistency) return "language";
  if (f.max_repeated_ngram_share < 1 && repeated_ngram_share(c.completion) > f.max_repeated_ngram_share)
    return "repeated_ngrams";
  if (f.reject_repeated_paragraphs && has_repeated_paragraph(c.completion)) return "repeated_paragraph";
  return "";
}

std::vector<size_t> select_samples(const RejectionFilter& f, const std::vector<Candidate>& samples,
                                   std::map<std::string, int64_t>& reasons, std::vector<std::string>* why_out) {
  std::vector<size_t> kept;
  if (why_out) why_out->assign(samples.size(), "");
  std::set<std::string> texts;
  for (size_t i = 0; i < samples.size(); ++i) {
    std::string why = rejection_reason(f, samples[i]);
    if (why.empty() && f.deduplicate && !texts.insert(trim(samples[i].completion)).second) why = "duplicate";
    if (why.empty() && f.max_kept_per_prompt > 0 && (int64_t)kept.size() >= f.max_kept_per_prompt) why = "over_limit";
    if (why.empty()) kept.push_back(i);
    else ++reasons[why];
    if (why_out) (*why_out)[i] = why;
  }
  return kept;
}

std::vector<std::pair<size_t, size_t>> preference_pairs(const std::vector<Candidate>& samples,
                                                        const std::vector<size_t>& kept,
                                                        const std::vector<std::string>& why) {
  std::vector<size_t> worse;
  std::set<std::string> texts;
  for (size_t i = 0; i < samples.size(); ++i)
    if (!why[i].empty() && why[i] != "duplicate" && why[i] != "over_limit" && why[i] != "error" &&
        texts.insert(trim(samples[i].completion)).second)
      worse.push_back(i);
  std::vector<std::pair<size_t, size_t>> pairs;
  for (size_t j = 0; j < std::min(kept.size(), worse.size()); ++j) pairs.emplace_back(kept[j], worse[j]);
  return pairs;
}

}  // namespace grpo::trainer
