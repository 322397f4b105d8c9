// Fuzz target: a chat template from a checkpoint (untrusted text) parsed and rendered. The input is
// the template, optionally followed by a NUL byte and a JSON array of messages to render it with.
#include <cstdint>
#include <string>

#include "text/chat_template.h"
#include "util/error.h"
#include "util/json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string input(reinterpret_cast<const char*>(data), size);
  std::string source = input, messages_text = R"([{"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "<think>2+2</think>4",
     "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": [1, 2.5, null]}}}]}])";
  if (size_t nul = input.find('\0'); nul != std::string::npos) {
    source = input.substr(0, nul);
    messages_text = input.substr(nul + 1);
  }
  try {
    grpo::text::ChatTemplate t(source, "fuzz", {{"bos_token", "<s>"}, {"eos_token", "</s>"}});
    auto messages = grpo::parse_ordered_json(messages_text, "fuzz messages");
    grpo::text::ChatOptions options;
    t.render(messages, options);
    options.add_generation_prompt = true;
    t.render(messages, options);
  } catch (const grpo::Error&) {
  }
  return 0;
}
