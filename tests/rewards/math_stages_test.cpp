// The math checker's stages on their own: extraction (which text is the answer) and equivalence
// (when two parsed answers are equal), each against hand-checked cases.
#include <gtest/gtest.h>

#include "rewards/math/equivalence.h"
#include "rewards/math/extraction.h"
#include "rewards/math/parser.h"

using namespace grpo::rewards;
using namespace grpo::rewards::math;

namespace {

std::string extracted(const std::string& text) {
  Budget b;
  return extract_and_parse(text, MathCheckOptions{}, b).text;
}

bool equal(const std::string& prediction, const std::string& reference) {
  Budget b;
  return equivalent(parse_with_unions(prediction, false, b), parse_with_unions(reference, false, b), MathCheckOptions{}, b);
}

}  // namespace

TEST(MathExtraction, FindsTheFinalAnswerInOrderOfAuthority) {
  EXPECT_EQ(extracted("First $x=2$, so \\boxed{3}. Checking the work again, the answer is \\boxed{\\frac{1}{2}}."),
            "\\frac{1}{2}");
  EXPECT_EQ(extracted("\\boxed{1}, \\boxed{2} and \\boxed{3}"), "1 , 2 , 3");  // siblings form one list
  EXPECT_EQ(extracted("\\boxed{\\{1,\\{2\\}\\}}"), "\\{1,\\{2\\}\\}");                // nested braces
  EXPECT_EQ(extracted("<think>7 or 8</think> <answer>\\frac{3}{4}</answer>"), "\\frac{3}{4}");
  EXPECT_EQ(extracted("We try $5$ and $6$. The final answer is 12 apples."), "12");
  EXPECT_EQ(extracted("Compute $3+4$ to get $7$"), "7");
  EXPECT_EQ(extracted("so 1,000 people came; then 250"), "250");
  EXPECT_EQ(extracted("nothing numeric here"), "");
  EXPECT_EQ(choice_letter("I think the answer is (C) because"), "C");
  EXPECT_EQ(choice_letter("B"), "B");
}

TEST(MathExtraction, AReferenceIsParsedWholeUnlessItIsASolution) {
  Budget b;
  EXPECT_EQ(parse_reference("[2,5)", MathCheckOptions{}, b).text, "[2,5)");
  EXPECT_EQ(parse_reference("$\\{3,1,2\\}$", MathCheckOptions{}, b).text, "\\{3,1,2\\}");
  EXPECT_EQ(parse_reference("So the sum is $\\boxed{9}$.", MathCheckOptions{}, b).text, "9");
}

TEST(MathEquivalence, EachKindComparesItsOwnWay) {
  EXPECT_TRUE(equal("(1,2)", "(1, 2)"));        // tuples: in order
  EXPECT_FALSE(equal("(2,1)", "(1,2)"));
  EXPECT_TRUE(equal("\\{2,1\\}", "\\{1,2\\}"));  // sets: without order
  EXPECT_FALSE(equal("[1,2)", "[1,2]"));         // intervals: with their ends
  EXPECT_TRUE(equal("(-\\infty,0] \\cup (1,2)", "(1,2) \\cup (-\\infty,0]"));
  EXPECT_TRUE(equal("1 \\pm \\sqrt{2}", "1+\\sqrt{2}, 1-\\sqrt{2}"));  // ± as its two values
  EXPECT_TRUE(equal("2x + 4 = 0", "x + 2 = 0"));                       // equations up to scale
  EXPECT_TRUE(equal("x > 3", "3 < x"));                                // inequalities up to direction
  EXPECT_FALSE(equal("x > 3", "x < 3"));
  EXPECT_TRUE(equal("x = 5", "5"));  // `x = value` against a value
  EXPECT_TRUE(equal("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"));
  EXPECT_FALSE(equal("\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"));
  EXPECT_TRUE(equal("\\frac{\\sqrt{8}}{2}", "\\sqrt{2}"));  // values
  EXPECT_TRUE(equal("50\\%", "50"));
}
