// The math answer checker against the peers' own test suites: 322 (prediction, reference,
// expected) cases from Math-Verify, lighteval, hendrycks MATH, open-r1 and Qwen2.5-Math, each
// checked in the mode its upstream test used. Every disagreement is printed.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/conformance.h"
#include "rewards/math/checker.h"

using grpo::rewards::check_math_answer;
using grpo::rewards::MathCheckOptions;
using json = nlohmann::json;

namespace {

MathCheckOptions options_for(const json& mode) {
  MathCheckOptions o;
  if (mode.is_null()) return o;
  std::string helper = mode.value("helper", "");
  if (helper.find("hendrycks") != std::string::npos) o.hendrycks = true;
  if (mode.contains("match_types") && mode["match_types"].is_array()) {
    o.latex = o.expr = false;
    for (const auto& m : mode["match_types"]) {
      std::string t = m.get<std::string>();
      if (t == "latex") o.latex = true;
      if (t == "expr") o.expr = true;
      if (t == "NativeLetters") o.letters = true;
    }
  }
  if (mode.contains("precision")) o.precision = mode["precision"].get<int>();
  if (mode.contains("strict")) o.strict = mode["strict"].get<bool>();
  return o;
}

}  // namespace

TEST(MathConformance, AgreesWithUpstreamVerdictsOnAtLeast95Percent) {
  auto cases = grpo::testing::conformance_cases(GRPO_SHARED_DATA, "math_equiv_cases.jsonl");
  if (!cases) GTEST_SKIP() << GRPO_SHARED_DATA << "/conformance/math_equiv_cases.jsonl not present";
  int total = 0, agree = 0;
  for (const json& r : *cases) {
    auto o = options_for(r["mode"]);
    auto v = check_math_answer(r["pred"].get<std::string>(), r["gold"].get<std::string>(), o);
    bool expected = r["expected"].get<bool>();
    ++total;
    if (v.correct == expected) {
      ++agree;
    } else {
      std::string pred = r["pred"].get<std::string>(), gold = r["gold"].get<std::string>();
      if (pred.size() > 120) pred = "..." + pred.substr(pred.size() - 120);
      if (gold.size() > 80) gold = "..." + gold.substr(gold.size() - 80);
      std::cout << "disagree #" << r["id"] << " expected " << expected << " [" << r["source"].get<std::string>()
                << "] pred=" << json(pred).dump() << " gold=" << json(gold).dump() << " -> extracted "
                << json(v.extracted).dump() << " vs " << json(v.reference).dump()
                << (v.note.empty() ? "" : " (" + v.note + ")") << "\n";
    }
  }
  double rate = 100.0 * agree / total;
  std::cout << "math conformance: " << agree << "/" << total << " = " << rate << "%\n";
  EXPECT_EQ(total, 322);
  EXPECT_GE(rate, 95.0);
}
