// Which sampled completions a rejection-sampling stage keeps (DeepSeek-R1's stage 3: correct,
// well-formed, single-language, non-repetitive samples), and why each other one is dropped.
// Torch-free; the stage runner (trainer/rejection_sampling.h) samples and scores, this decides.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "rewards/reward.h"

namespace grpo::trainer {

struct RejectionFilter {
  std::map<std::string, double> min_rewards;  // reward component (or "reward", the weighted sum) >= value
  bool require_correct = true;                // the answer is right (the math component, else the reward, is 1)
  std::string language;                       // "en" or "zh": the chain of thought's share in it must reach
  double min_language_consistency = 0.95;     //   this (the language_consistency reward); "" = no check
  int64_t min_tokens = 0, max_tokens = 0;     // completion length bounds (0 = none)
  double max_repeated_ngram_share = 0.2;      // share of word 4-grams that repeat an earlier one (1 = off)
  bool reject_repeated_paragraphs = true;     // a paragraph (20+ characters) that appears twice
  bool deduplicate = true;                    // the same completion twice for one prompt: kept once
  bool drop_truncated = true;                 // a sample cut at max_completion_length (no eos)
  int64_t max_kept_per_prompt = 0;            // 0 = every sample that passes
};

struct Candidate {
  std::string completion;
  int64_t tokens = 0;
  bool truncated = false;          // stopped at the length limit, not at eos
  rewards::RewardResult result;    // the stage's rewards
  double language_share = -1;      // the language_consistency reward's value (< 0: not computed)
};

// "" to keep, else the reason: error, truncated, too_short, too_long, incorrect, reward:<name>,
// language, repeated_ngrams, repeated_paragraph.
std::string rejection_reason(const RejectionFilter& f, const Candidate& c);

// The samples of one prompt kept, in order, after the filter, deduplication and the per-prompt cap;
// `reasons` counts every drop (duplicate and over_limit included). `why`, when given, receives each
// sample's reason ("" for the kept ones).
std::vector<size_t> select_samples(const RejectionFilter& f, const std::vector<Candidate>& samples,
                                   std::map<std::string, int64_t>& reasons, std::vector<std::string>* why = nullptr);

// Preference pairs of one prompt, as (chosen, rejected) sample indices: the kept samples in order,
// each with a distinct sample dropped for its quality (not a duplicate, over the cap or a reward
// error), also in order; min(kept, such drops) pairs. `why` is select_samples' per-sample reason.
std::vector<std::pair<size_t, size_t>> preference_pairs(const std::vector<Candidate>& samples,
                                                        const std::vector<size_t>& kept,
                                                        const std::vector<std::string>& why);

// Share of whitespace-separated word 4-grams that repeat an earlier 4-gram (0 with fewer than 8 words).
double repeated_ngram_share(const std::string& text);
// Whether a paragraph (blank-line separated, trimmed, at least 20 characters) appears twice.
bool has_repeated_paragraph(const std::string& text);

}  // namespace grpo::trainer
