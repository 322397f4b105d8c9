#include "trainer/out_of_memory.h"

#include <c10/util/Exception.h>

#include "util/error.h"

namespace grpo::trainer {

namespace {

// The allocator's figures from its message: the first line, without the advice and link that end it.
std::string figures(const c10::OutOfMemoryError& e) {
  std::string msg = e.what_without_backtrace();
  if (auto nl = msg.find('\n'); nl != std::string::npos) msg.resize(nl);
  for (const char* tail : {" If reserved but unallocated", " See documentation"})
    if (auto at = msg.find(tail); at != std::string::npos) msg.resize(at);
  if (msg.rfind("CUDA out of memory. ", 0) == 0) msg.erase(0, 20);
  return msg;
}

}  // namespace

void with_memory_advice(const std::string& where, const std::vector<std::string>& remedies,
                        const std::function<void()>& work) {
  try {
    work();
  } catch (const c10::OutOfMemoryError& e) {
    std::string fit;
    for (size_t i = 0; i < remedies.size(); ++i)
      fit += (i == 0 ? "" : i + 1 == remedies.size() ? ", or " : ", ") + remedies[i];
    throw Error(where + ": CUDA out of memory (" + figures(e) + "). To fit: " + fit +
                "; where much memory is reserved but unallocated, PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "
                "can make room. Checkpoints written before this step are intact (--resume continues from the last).");
  }
}

std::vector<std::string> supervised_memory_remedies(const StageSettings& s) {
  std::vector<std::string> out = {
      "lower mini_batch_size (now " +
          (s.optim.mini_batch_size > 0 ? std::to_string(s.optim.mini_batch_size) : std::string("0: the step's rows")) +
          ")",
      "lower max_length (now " + std::to_string(s.sft.max_length) + ")"};
  if (!s.model.gradient_checkpointing) out.push_back("set gradient_checkpointing: true");
  return out;
}

}  // namespace grpo::trainer
