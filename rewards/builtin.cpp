#include "rewards/builtin.h"

#include <re2/re2.h>

#include <algorithm>
#include <atomic>
#include <set>
#include <string_view>
#include <unordered_map>
#include <sstream>
#include <thread>

#include "rewards/math/checker.h"
#include "util/strings.h"
#include "util/error.h"

namespace grpo::rewards {

namespace {

using json = nlohmann::json;

// Inside the last <tag>...</tag>, or nullopt.
std::optional<std::string> last_tagged(const std::string& s, const std::string& tag) {
  std::string open = "<" + tag + ">", close = "</" + tag + ">";
  size_t c = s.rfind(close);
  if (c == std::string::npos) return std::nullopt;
  size_t o = s.rfind(open, c);
  if (o == std::string::npos) return std::nullopt;
  return s.substr(o + open.size(), c - o - open.size());
}

class MathReward : public Reward {
 public:
  explicit MathReward(const json& o) {
    opt_.precision = o.value("precision", 6);
    opt_.latex = o.value("latex", true);
    opt_.expr = o.value("expr", true);
    opt_.letters = o.value("letters", false);
    opt_.strict = o.value("strict", true);
    answer_tag_ = o.value("answer_tag", true);
  }
  RewardResult score(const RewardItem& item) const override {
    if (item.reference.empty()) throw std::invalid_argument("no reference answer");
    std::string text = item.completion;
    if (answer_tag_)
      if (auto inner = last_tagged(text, "answer")) text = *inner;
    MathVerdict v = check_math_answer(text, item.reference, opt_);
    RewardResult r;
    r.reward = v.correct ? 1.0 : 0.0;
    r.components["math"] = r.reward;
    return r;
  }

 private:
  MathCheckOptions opt_;
  bool answer_tag_ = true;
};

const char* kR1Format = "(?s)<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>";

class FormatReward : public Reward {
 public:
  explicit FormatReward(const json& o) : re_(o.value("pattern", std::string(kR1Format))) {
    if (!re_.ok()) throw std::invalid_argument("format: bad pattern: " + re_.error());
  }
  RewardResult score(const RewardItem& item) const override {
    RewardResult r;
    r.reward = RE2::FullMatch(item.completion, re_) ? 1.0 : 0.0;
    r.components["format"] = r.reward;
    return r;
  }

 private:
  RE2 re_;
};

size_t count_of(const std::string& s, const std::string& sub) {
  size_t n = 0;
  for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + 1)) ++n;
  return n;
}

class TagCountReward : public Reward {
 public:
  explicit TagCountReward(const json&) {}
  RewardResult score(const RewardItem& item) const override {
    const std::string& c = item.completion;
    RewardResult r;
    for (const char* t : {"<think>\n", "\n</think>\n", "\n<answer>\n", "\n</answer>"})
      if (count_of(c, t) == 1) r.reward += 0.25;
    r.components["tag_count"] = r.reward;
    return r;
  }
};

size_t utf8_chars(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

class OverlongReward : public Reward {
 public:
  explicit OverlongReward(const json& o) : max_(o.value("max_length", 4096)), cache_(o.value("cache_length", 512)) {
    if (cache_ <= 0 || cache_ > max_) throw std::invalid_argument("overlong: need 0 < cache_length <= max_length");
  }
  RewardResult score(const RewardItem& item) const override {
    double len = item.metadata.contains("completion_tokens") ? item.metadata["completion_tokens"].get<double>()
                                                            : (double)utf8_chars(item.completion);
    double expected = max_ - cache_;
    RewardResult r;
    if (len <= expected) r.reward = 0;
    else if (len <= max_) r.reward = (expected - len) / cache_;
    else r.reward = -1;
    r.components["overlong"] = r.reward;
    return r;
  }

 private:
  double max_, cache_;
};

// Words: runs of ASCII letters count as one Latin word; each CJK character counts as one word.
class LanguageReward : public Reward {
 public:
  explicit LanguageReward(const json& o) : lang_(o.value("language", std::string("en"))) {
    if (lang_ != "en" && lang_ != "zh") throw std::invalid_argument("language_consistency: language must be en or zh");
  }
  RewardResult score(const RewardItem& item) const override {
    std::string text = item.completion;
    if (auto inner = last_tagged(text, "think")) text = *inner;
    size_t latin = 0, cjk = 0, other = 0;
    for (size_t i = 0; i < text.size();) {
      unsigned char c = text[i];
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        while (i < text.size() && std::isalpha((unsigned char)text[i])) ++i;
        ++latin;
        continue;
      }
      if (c < 0x80) { ++i; continue; }
      int len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
      uint32_t cp = 0;
      if (len == 3 && i + 2 < text.size()) cp = ((c & 0x0F) << 12) | ((text[i + 1] & 0x3F) << 6) | (text[i + 2] & 0x3F);
      bool is_cjk = (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF);
      bool is_letter = len >= 2 && !(cp >= 0x3000 && cp <= 0x303F) && !(cp >= 0xFF00 && cp <= 0xFF0F);
      if (is_cjk) ++cjk;
      else if (is_letter) ++other;
      i += len;
    }
    size_t words = latin + cjk + other;
    RewardResult r;
    r.reward = words == 0 ? 0.0 : (double)(lang_ == "en" ? latin : cjk) / (double)words;
    r.components["language_consistency"] = r.reward;
    return r;
  }

 private:
  std::string lang_;
};

class RepetitionReward : public Reward {
 public:
  explicit RepetitionReward(const json& o) : n_(o.value("ngram", 3)), max_penalty_(o.value("max_penalty", 1.0)) {
    if (n_ < 1) throw std::invalid_argument("repetition: ngram must be >= 1");
  }
  RewardResult score(const RewardItem& item) const override {
    // Words as small ids (one dictionary entry per distinct word), then the distinct n-grams
    // counted by sorting their start positions: memory stays a few bytes per word of input.
    std::string text = item.completion;
    for (auto& c : text) c = (char)std::tolower((unsigned char)c);
    std::unordered_map<std::string_view, uint32_t> dictionary;
    std::vector<uint32_t> ids;
    for (size_t i = 0; i < text.size();) {
      while (i < text.size() && std::isspace((unsigned char)text[i])) ++i;
      size_t j = i;
      while (j < text.size() && !std::isspace((unsigned char)text[j])) ++j;
      if (j > i) ids.push_back(dictionary.emplace(std::string_view(text).substr(i, j - i), (uint32_t)dictionary.size()).first->second);
      i = j;
    }
    RewardResult r;
    if ((int64_t)ids.size() >= n_) {
      const size_t total = ids.size() - n_ + 1;
      std::vector<uint32_t> starts(total);
      for (size_t i = 0; i < total; ++i) starts[i] = (uint32_t)i;
      auto gram_less = [&](uint32_t a, uint32_t b) {
        return std::lexicographical_compare(ids.begin() + a, ids.begin() + a + n_, ids.begin() + b, ids.begin() + b + n_);
      };
      std::sort(starts.begin(), starts.end(), gram_less);
      size_t distinct = 1;
      for (size_t i = 1; i < total; ++i) distinct += gram_less(starts[i - 1], starts[i]);
      r.reward = -(1.0 - (double)distinct / (double)total) * max_penalty_;
    }
    r.components["repetition"] = r.reward;
    return r;
  }

 private:
  int n_;
  double max_penalty_;
};

template <typename R>
RewardFactory factory() {
  return [](const json& o) { return std::make_unique<R>(o); };
}

}  // namespace

void register_builtin_rewards(RewardRegistry& r) {
  r.add("math", factory<MathReward>(), "1 if the final answer equals the reference (LaTeX/plain, symbolic)");
  r.add("format", factory<FormatReward>(), "1 if the completion follows <think>..</think><answer>..</answer> (RE2 pattern)");
  r.add("tag_count", factory<TagCountReward>(), "0.25 per R1 tag present exactly once");
  r.add("overlong", factory<OverlongReward>(), "DAPO soft overlong penalty (0 .. -1)");
  r.add("length", factory<OverlongReward>(), "alias of overlong");
  r.add("language_consistency", factory<LanguageReward>(), "share of the chain of thought in the target language");
  r.add("repetition", factory<RepetitionReward>(), "n-gram repetition penalty (0 .. -max_penalty)");
  register_code_rewards(r);
}

RewardRegistry& default_registry() {
  static RewardRegistry* r = [] {
    auto* reg = new RewardRegistry();
    register_builtin_rewards(*reg);
    return reg;
  }();
  return *r;
}

CombinedReward::CombinedReward(const std::string& spec, const RewardRegistry& registry, const json& options) {
  for (const std::string& part : split_list(spec)) {
    double w = 1.0;
    std::string name = part;
    if (auto c = part.find(':'); c != std::string::npos) {
      name = part.substr(0, c);
      try {
        w = std::stod(part.substr(c + 1));
      } catch (const std::exception&) {
        throw Error("reward spec '" + spec + "': bad weight in '" + part + "'");
      }
    }
    json o = options.contains(name) ? options[name] : json::object();
    try {
      rewards_.push_back(registry.make(name, o));
    } catch (const std::invalid_argument& e) {
      throw Error("reward spec '" + spec + "': " + e.what());
    }
    weights_.push_back({name, w});
  }
  if (rewards_.empty()) throw Error("reward spec '" + spec + "' names no reward");
}

bool CombinedReward::slow() const {
  for (const auto& r : rewards_)
    if (r->slow()) return true;
  return false;
}

RewardResult CombinedReward::score(const RewardItem& item) const {
  RewardResult out;
  for (size_t i = 0; i < rewards_.size(); ++i) {
    const auto& [name, w] = weights_[i];
    try {
      RewardResult r = rewards_[i]->score(item);
      out.reward += w * r.reward;
      for (auto& kv : r.components) out.components[kv.first] = kv.second;
      out.components[name] = r.reward;
      if (!r.error.empty()) out.error += (out.error.empty() ? "" : "; ") + name + ": " + r.error;
    } catch (const std::exception& e) {
      out.error += (out.error.empty() ? "" : "; ") + name + ": " + e.what();
    }
  }
  return out;
}

std::vector<RewardResult> score_all(const Reward& reward, const std::vector<RewardItem>& items, int threads) {
  std::vector<RewardResult> out(items.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i; (i = next++) < items.size();) {
      try {
        out[i] = reward.score(items[i]);
      } catch (const std::exception& e) {
        out[i] = RewardResult{};
        out[i].error = e.what();
      } catch (...) {
        out[i] = RewardResult{};
        out[i].error = "unknown error";
      }
    }
  };
  threads = std::max(1, std::min<int>(threads, (int)items.size()));
  if (threads == 1) {
    work();
    return out;
  }
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(work);
  for (auto& t : pool) t.join();
  return out;
}

}  // namespace grpo::rewards
