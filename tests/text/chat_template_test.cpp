// The chat-template renderer's semantics that transformers parity does not pin down on its own:
// Jinja scoping, Python number formatting, error lines, and how a conversation splits into trained
// and untrained text for sft.
#include <gtest/gtest.h>

#include "text/chat_template.h"
#include "text/jinja/value.h"
#include "util/error.h"

using grpo::text::ChatTemplate;
using json = nlohmann::ordered_json;

namespace {

std::string render(const std::string& source, const json& messages = json::array(), bool gen = false) {
  grpo::text::ChatOptions o;
  o.add_generation_prompt = gen;
  return ChatTemplate(source, "t", {{"bos_token", "<s>"}, {"eos_token", "</s>"}}).render(messages, o);
}

const char* kChatML =
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// Like DeepSeek-R1's: past replies lose their <think> part, and a new reply opens with "<think>\n".
const char* kR1Like =
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}{{ '<U>' + m.content }}"
    "{% else %}{% set c = m.content %}{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}"
    "{{ '<A>' + c + eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<A><think>\\n' }}{% endif %}";

json conversation() {
  return json::array({{{"role", "user"}, {"content", "1+1?"}},
                      {{"role", "assistant"}, {"content", "<think>\none plus one\n</think>\n2"}},
                      {{"role", "user"}, {"content", "2+2?"}},
                      {{"role", "assistant"}, {"content", "<think>\ntwo plus two\n</think>\n4"}}});
}

}  // namespace

TEST(ChatTemplate, ScopingFollowsJinja) {
  // A set inside a loop stays in the loop; a namespace carries state out; an if block does not scope.
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = x + 1 %}{{ x }}{% endfor %}{{ x }}"), "12121");
  EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% for i in [1, 2, 3] %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"), "6");
  EXPECT_EQ(render("{% if true %}{% set y = 'in' %}{% endif %}{{ y }}"), "in");
  EXPECT_EQ(render("{% macro f(a, b='B') %}{{ a }}{{ b }}{{ x }}{% endmacro %}{% set x = 'X' %}{% for x in [1] %}{{ f('A') }}{% endfor %}"),
            "ABX");
}

TEST(ChatTemplate, NumbersPrintAsPython) {
  using grpo::text::jinja::float_repr;
  EXPECT_EQ(float_repr(0.1), "0.1");
  EXPECT_EQ(float_repr(2.0), "2.0");
  EXPECT_EQ(float_repr(1e-5), "1e-05");
  EXPECT_EQ(float_repr(1e16), "1e+16");
  EXPECT_EQ(float_repr(123456789012345.0), "123456789012345.0");
  EXPECT_EQ(float_repr(0.1 + 0.2), "0.30000000000000004");
  EXPECT_EQ(float_repr(-0.0001), "-0.0001");
  EXPECT_EQ(render("{{ 7 // -2 }} {{ -7 % 3 }} {{ 1 / 4 }} {{ [1, 'a', none, true] }}"), "-4 2 0.25 [1, 'a', None, True]");
}

TEST(ChatTemplate, ErrorsNameTheLine) {
  auto message = [](const std::string& source) {
    try {
      render(source, json::array({{{"role", "user"}, {"content", "x"}}}));
    } catch (const grpo::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("a\n{% include 'x' %}").find("t: line 2: the 'include' tag is not supported"), std::string::npos);
  EXPECT_NE(message("a\nb\n{{ raise_exception('roles must alternate') }}").find("line 3: the template raised an error: roles must alternate"),
            std::string::npos);
  EXPECT_NE(message("{{ 1 +\n 'a' }}").find("line 1: unsupported operand types"), std::string::npos);
  EXPECT_NE(message("{{ 99999999999999999999 }}").find("too large"), std::string::npos);
  EXPECT_NE(message("{{ " + std::string(300, '(') + "1" + std::string(300, ')') + " }}").find("nested deeper"), std::string::npos);
  EXPECT_NE(message("{% for i in range(100000) %}{% for j in range(100) %}{% endfor %}{% endfor %}").find("a million"),
            std::string::npos);
}

TEST(ChatTemplate, EveryAssistantTurnIsTrainedWhenTheTemplateRendersIncrementally) {
  ChatTemplate t(kChatML, "chatml");
  auto tt = grpo::text::training_text(t, conversation(), "</s>");
  EXPECT_TRUE(tt.every_turn);
  std::string joined, trained;
  for (const auto& p : tt.pieces) {
    joined += p.text;
    if (p.trained) trained += "[" + p.text + "]";
  }
  EXPECT_EQ(joined, t.render(conversation()));
  EXPECT_EQ(trained, "[<think>\none plus one\n</think>\n2<|im_end|>\n][<think>\ntwo plus two\n</think>\n4<|im_end|>\n]");
}

TEST(ChatTemplate, ATemplateThatRewritesPastTurnsTrainsTheFinalReplyAfterItsOpener) {
  ChatTemplate t(kR1Like, "r1", {{"bos_token", "<s>"}, {"eos_token", "</s>"}});
  auto tt = grpo::text::training_text(t, conversation(), "</s>");
  EXPECT_FALSE(tt.every_turn);
  ASSERT_EQ(tt.pieces.size(), 2u);
  EXPECT_EQ(tt.pieces[0].text, "<s><U>1+1?<A>\n2</s><U>2+2?<A><think>\n");
  EXPECT_FALSE(tt.pieces[0].trained);
  EXPECT_EQ(tt.pieces[1].text, "two plus two\n</think>\n4</s>");  // "<think>\n" is the opener's, not repeated
  EXPECT_TRUE(tt.pieces[1].trained);
  json no_reply = json::array({{{"role", "user"}, {"content", "hi"}}});
  EXPECT_THROW(grpo::text::training_text(t, no_reply, "</s>"), grpo::Error);
}
