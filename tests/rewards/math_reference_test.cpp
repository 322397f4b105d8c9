// The math checker on references written the way datasets write them (bare answers, as MATH-500's
// `answer` column has them) and on hand-checked cases where the exact answer matters.
#include <gtest/gtest.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "rewards/math/checker.h"

using grpo::rewards::check_math_answer;

namespace {

bool correct(const std::string& prediction, const std::string& reference) {
  return check_math_answer(prediction, reference).correct;
}

std::string fill(const std::string& form, const std::string& answer) {
  std::string out = form;
  out.replace(out.find("{}"), 2, answer);
  return out;
}

// The ways models write a final answer: boxed, after a phrase, in the R1 template's tags, with and
// without '$'.
const std::vector<std::string> kForms = {
    "So the final answer is $\\boxed{{}}$.",
    "Therefore, the answer is \\boxed{{}}.",
    "The answer is ${}$.",
    "The answer is {}",
    "<think> The sum is what we need. </think> <answer>{}</answer>",
    "<think> The sum is what we need. </think> <answer>${}$</answer>",
    "<answer>\\boxed{{}}</answer>",
};

}  // namespace

TEST(MathReference, BareReferencesMatchCorrectBoxedPredictions) {
  // Each of these scored 0 against its own boxed value while the $-wrapped reference scored 1.
  for (const std::string ref : {"[2,5)", "\\text{Tuesday}", "\\{3,1,2\\}", "\\text{2}", "(-\\infty, 0]",
                                "\\begin{pmatrix} -18 \\\\ -49 \\\\ 96 \\end{pmatrix}", "\\$32,\\!348",
                                "\\frac 34", "2\\sqrt{5}", "(2,12) \\cup (12,102)"}) {
    for (const auto& form : kForms) EXPECT_TRUE(correct(fill(form, ref), ref)) << fill(form, ref) << " vs " << ref;
    EXPECT_TRUE(correct(fill("\\boxed{{}}", ref), "$" + ref + "$")) << ref;
  }
  EXPECT_FALSE(correct("\\boxed{[3,5)}", "[2,5)"));
  EXPECT_FALSE(correct("\\boxed{(2,5)}", "[2,5)"));
  EXPECT_FALSE(correct("\\boxed{5}", "[2,5)"));
  EXPECT_FALSE(correct("\\boxed{\\text{Monday}}", "\\text{Tuesday}"));
  EXPECT_FALSE(correct("\\boxed{\\{3,1\\}}", "\\{3,1,2\\}"));
  EXPECT_FALSE(correct("\\boxed{3}", "\\text{2}"));
  // A worked solution as the reference is still read by its last \boxed.
  EXPECT_TRUE(correct("\\boxed{7}", "Adding, we get $3 + 4 = \\boxed{7}$."));
  EXPECT_FALSE(correct("\\boxed{4}", "Adding, we get $3 + 4 = \\boxed{7}$."));
}

TEST(MathReference, ExactRationalsAreComparedExactly) {
  EXPECT_FALSE(correct("\\boxed{\\frac{1}{1000001}}", "\\frac{1}{1000000}"));
  EXPECT_TRUE(correct("\\boxed{\\frac{2}{2000000}}", "\\frac{1}{1000000}"));
  // Numerals of any length: exact (they used to become doubles compared at 1e-6 relative).
  EXPECT_FALSE(correct("\\boxed{12345678901234567890}", "12345678901234567891"));
  EXPECT_TRUE(correct("\\boxed{12345678901234567890}", "12345678901234567890"));
  EXPECT_TRUE(correct("\\boxed{2^{100}}", "1267650600228229401496703205376"));
  EXPECT_FALSE(correct("\\boxed{2^{100}+1}", "1267650600228229401496703205376"));
  // A decimal may be rounded: within 10^-6 relative, and no absolute floor for small values.
  EXPECT_TRUE(correct("\\boxed{0.5}", "\\frac{1}{2}"));
  EXPECT_TRUE(correct("\\boxed{0.3333333}", "\\frac{1}{3}"));
  EXPECT_FALSE(correct("\\boxed{0.33}", "\\frac{1}{3}"));
  EXPECT_FALSE(correct("\\boxed{.0000673}", ".0000672"));
}

TEST(MathReference, SymbolicChecksUseNegativeFractionalAndComplexPoints) {
  EXPECT_TRUE(correct("\\boxed{\\sin^2 x + \\cos^2 x}", "1"));
  EXPECT_FALSE(correct("\\boxed{|x|}", "x"));
  EXPECT_FALSE(correct("\\boxed{\\sqrt{x^2}}", "x"));
  EXPECT_TRUE(correct("\\boxed{\\sqrt{x^2}}", "\\sqrt{x^2}"));
  EXPECT_TRUE(correct("\\boxed{(x+1)^2}", "x^2+2x+1"));
  EXPECT_FALSE(correct("\\boxed{x+1}", "y+1"));
  EXPECT_TRUE(correct("\\boxed{\\lfloor 2.5 \\rfloor}", "2"));
  EXPECT_TRUE(correct("\\boxed{\\left\\lceil \\frac{7}{2} \\right\\rceil}", "4"));
  EXPECT_FALSE(correct("\\boxed{\\lfloor 2.5 \\rfloor}", "3"));
}

// Every MATH-500 answer, bare, as the reference: against correct predictions in each form, and
// against wrong ones made by changing one digit. Agreement is printed; the counts are asserted.
TEST(MathReference, EveryMath500AnswerAgainstCorrectAndPerturbedPredictions) {
  std::ifstream in(std::string(GRPO_SHARED_DATA) + "/benchmarks/math500_test.jsonl");
  if (!in) GTEST_SKIP() << GRPO_SHARED_DATA << "/benchmarks/math500_test.jsonl not present";
  std::vector<std::string> answers;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) answers.push_back(nlohmann::json::parse(line)["answer"].get<std::string>());
  ASSERT_EQ(answers.size(), 500u);

  int accepted = 0, checks = 0;
  for (const auto& answer : answers)
    for (const auto& form : kForms) {
      ++checks;
      if (correct(fill(form, answer), answer)) ++accepted;
      else std::cout << "missed: " << fill(form, answer) << "  vs  " << answer << "\n";
    }
  // Wrong predictions: the first digit, or the last digit, changed (d -> d+1 mod 10).
  int wrong_first = 0, rejected_first = 0, wrong_last = 0, rejected_last = 0;
  std::vector<std::string> accepted_last;
  for (const auto& answer : answers) {
    size_t first = answer.find_first_of("0123456789"), last = answer.find_last_of("0123456789");
    if (first == std::string::npos) continue;
    for (size_t at : {first, last}) {
      std::string wrong = answer;
      wrong[at] = char('0' + (answer[at] - '0' + 1) % 10);
      bool ok = !correct("The answer is $\\boxed{" + wrong + "}$.", answer);
      if (at == first) {
        ++wrong_first;
        rejected_first += ok;
      } else {
        ++wrong_last;
        rejected_last += ok;
        if (!ok) accepted_last.push_back(wrong + " for " + answer);
      }
      if (first == last) break;
    }
  }
  std::cout << "MATH-500 bare references: correct predictions accepted " << accepted << "/" << checks
            << "; first digit changed, rejected " << rejected_first << "/" << wrong_first
            << "; last digit changed, rejected " << rejected_last << "/" << wrong_last << "\n";
  for (const auto& s : accepted_last) std::cout << "  accepted: " << s << "\n";
  EXPECT_EQ(accepted, checks);
  EXPECT_EQ(rejected_first, wrong_first);
  // Hand-checked: the two accepted are units' exponents (cm^2 -> cm^3), which the checker drops
  // with the units, as Math-Verify does.
  EXPECT_EQ(accepted_last, (std::vector<std::string>{"864 \\mbox{ inches}^3 for 864 \\mbox{ inches}^2",
                                                     "15\\mbox{ cm}^3 for 15\\mbox{ cm}^2"}));
}
