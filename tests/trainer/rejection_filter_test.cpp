// Rejection sampling's filters on hand-made samples: each filter keeps what it must and drops what
// it must with the reason named; deduplication and the per-prompt cap come after the filters.
#include "trainer/rejection_filter.h"

#include <gtest/gtest.h>

using namespace grpo::trainer;

namespace {

Candidate sample(const std::string& text, double math, double format = 1, int64_t tokens = 20) {
  Candidate c;
  c.completion = text;
  c.tokens = tokens;
  c.result.reward = math + 0.2 * format;
  c.result.components = {{"math", math}, {"format", format}};
  c.language_share = 1;
  return c;
}

const char* kGood = "<think>\nWe add the tens, then the ones: 20 + 30 = 50 and 4 + 5 = 9.\n</think>\n<answer>59</answer>";

}  // namespace

TEST(RejectionFilter, EachFilterDropsWhatItMustAndKeepsTheRest) {
  RejectionFilter f;
  f.min_rewards = {{"format", 1}};
  f.language = "en";
  f.min_tokens = 5;
  f.max_tokens = 100;
  EXPECT_EQ(rejection_reason(f, sample(kGood, 1)), "");
  EXPECT_EQ(rejection_reason(f, sample(kGood, 0)), "incorrect");
  EXPECT_EQ(rejection_reason(f, sample(kGood, 1, 0)), "reward:format");
  Candidate c = sample(kGood, 1);
  c.result.components.erase("format");  // a required reward that was not computed is not passed
  EXPECT_EQ(rejection_reason(f, c), "reward:format");
  c = sample(kGood, 1);
  c.result.error = "timeout";
  EXPECT_EQ(rejection_reason(f, c), "error");
  c = sample(kGood, 1);
  c.truncated = true;
  EXPECT_EQ(rejection_reason(f, c), "truncated");
  EXPECT_EQ(rejection_reason(f, sample(kGood, 1, 1, 3)), "too_short");
  EXPECT_EQ(rejection_reason(f, sample(kGood, 1, 1, 101)), "too_long");
  c = sample(kGood, 1);
  c.language_share = 0.6;  // mixed-language chain of thought
  EXPECT_EQ(rejection_reason(f, c), "language");
  c.language_share = 0.95;
  EXPECT_EQ(rejection_reason(f, c), "");
  // Repetition: the same sentence over and over, and a paragraph said twice.
  std::string loop = "<think>";
  for (int i = 0; i < 10; ++i) loop += " so the sum is fifty nine";
  EXPECT_EQ(rejection_reason(f, sample(loop + "</think><answer>59</answer>", 1)), "repeated_ngrams");
  const std::string para = "First we add the tens digits together.";
  RejectionFilter paragraphs_only = f;  // a short text said twice also repeats its 4-grams
  paragraphs_only.max_repeated_ngram_share = 1;
  EXPECT_EQ(rejection_reason(paragraphs_only, sample(para + "\n\nThen the ones: 9.\n\n" + para + "\n\n<answer>59</answer>", 1)),
            "repeated_paragraph");
  EXPECT_EQ(rejection_reason(f, sample("short\n\nshort\n\n<answer>59</answer>", 1)), "");  // under 20 characters
  // Switched off, the same samples pass.
  RejectionFilter off;
  off.require_correct = false;
  off.max_repeated_ngram_share = 1;
  off.reject_repeated_paragraphs = false;
  EXPECT_EQ(rejection_reason(off, sample(loop, 0)), "");
  EXPECT_EQ(rejection_reason(off, sample(para + "\n\n" + para, 0)), "");
  // Without a math component, correctness is the reward itself.
  Candidate plain;
  plain.completion = "x";
  plain.result.reward = 1;
  EXPECT_EQ(rejection_reason(RejectionFilter{}, plain), "");
  plain.result.reward = 0.5;
  EXPECT_EQ(rejection_reason(RejectionFilter{}, plain), "incorrect");
}

TEST(RejectionFilter, DuplicatesAndTheCapComeAfterTheFilters) {
  RejectionFilter f;
  f.max_kept_per_prompt = 2;
  std::map<std::string, int64_t> reasons;
  std::vector<Candidate> s = {sample("wrong <answer>1</answer>", 0), sample("A <answer>59</answer>", 1),
                              sample("A <answer>59</answer>\n", 1),  // the same once trimmed
                              sample("B <answer>59</answer>", 1), sample("C <answer>59</answer>", 1)};
  EXPECT_EQ(select_samples(f, s, reasons), (std::vector<size_t>{1, 3}));
  EXPECT_EQ(reasons, (std::map<std::string, int64_t>{{"incorrect", 1}, {"duplicate", 1}, {"over_limit", 1}}));
  f.deduplicate = false;
  f.max_kept_per_prompt = 0;
  reasons.clear();
  EXPECT_EQ(select_samples(f, s, reasons), (std::vector<size_t>{1, 2, 3, 4}));
}

TEST(RejectionFilter, PreferencePairsPutKeptSamplesAboveQualityDrops) {
  RejectionFilter f;
  f.max_kept_per_prompt = 2;
  std::map<std::string, int64_t> reasons;
  std::vector<std::string> why;
  std::vector<Candidate> s = {sample("wrong <answer>1</answer>", 0), sample("A <answer>59</answer>", 1),
                              sample("wrong <answer>1</answer>\n", 0),  // the same wrong text: one pair only
                              sample("A <answer>59</answer>", 1),         // a duplicate: no pair
                              sample("B <answer>59</answer>", 1), sample("C <answer>59</answer>", 1),  // C: over the cap
                              sample("wrong <answer>7</answer>", 0), sample("wrong <answer>8</answer>", 0)};
  const std::vector<size_t> kept = select_samples(f, s, reasons, &why);
  EXPECT_EQ(kept, (std::vector<size_t>{1, 4}));
  EXPECT_EQ(why, (std::vector<std::string>{"incorrect", "", "incorrect", "duplicate", "", "over_limit", "incorrect", "incorrect"}));
  // Kept 1 and 4 against the first two distinct wrong samples, 0 and 6; sample 7 has no partner.
  EXPECT_EQ(preference_pairs(s, kept, why), (std::vector<std::pair<size_t, size_t>>{{1, 0}, {4, 6}}));
  // Nothing kept, or nothing dropped for its quality: no pair.
  EXPECT_TRUE(preference_pairs(s, {}, why).empty());
  EXPECT_TRUE(preference_pairs(s, kept, std::vector<std::string>(s.size(), "duplicate")).empty());
}

TEST(RejectionFilter, RepetitionMeasures) {
  EXPECT_EQ(repeated_ngram_share("one two three"), 0);
  EXPECT_EQ(repeated_ngram_share("a b c d e f g h i j"), 0);
  EXPECT_NEAR(repeated_ngram_share("a b c d a b c d a b c d"), 5.0 / 9.0, 1e-12);  // 9 four-grams, 5 repeats
  EXPECT_FALSE(has_repeated_paragraph("one paragraph that is long enough\n\nanother one that is long enough"));
  EXPECT_TRUE(has_repeated_paragraph("  one paragraph that is long enough \n\nx\n\none paragraph that is long enough"));
}
