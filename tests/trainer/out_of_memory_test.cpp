// A CUDA out-of-memory error in a phase of a run becomes one line naming the step and phase, the
// allocator's figures (without its trailing advice), and the recipe keys that bound the phase;
// other errors pass through unchanged.
#include "trainer/out_of_memory.h"

#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "util/error.h"

namespace grpo::trainer {
namespace {

const char* kAllocatorMessage =
    "CUDA out of memory. Tried to allocate 1.49 GiB. GPU 0 has a total capacity of 79.18 GiB of which 1.49 GiB is "
    "free. Of the allocated memory 72.66 GiB is allocated by PyTorch, and 4.12 GiB is reserved by PyTorch but "
    "unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management";

TEST(OutOfMemory, NamesThePhaseTheFiguresAndTheKeys) {
  try {
    with_memory_advice("step 2, update", {"lower max_tokens_per_mini_batch (now 32768)", "set gradient_checkpointing: true"},
                       [] { C10_THROW_ERROR(OutOfMemoryError, kAllocatorMessage); });
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("step 2, update: CUDA out of memory (Tried to allocate 1.49 GiB.", 0), 0u) << msg;
    EXPECT_NE(msg.find("4.12 GiB is reserved by PyTorch but unallocated.)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("To fit: lower max_tokens_per_mini_batch (now 32768), or set gradient_checkpointing: true;"),
              std::string::npos)
        << msg;
    EXPECT_EQ(msg.find("See documentation"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

TEST(OutOfMemory, OtherErrorsPassThrough) {
  EXPECT_THROW(with_memory_advice("step 1, rollout", {"lower kv_cache_mb (now 4096)"},
                                  [] { throw std::runtime_error("reward worker gone"); }),
               std::runtime_error);
  try {
    with_memory_advice("step 1, rollout", {"lower kv_cache_mb (now 4096)"}, [] { TORCH_CHECK(false, "shape mismatch"); });
    FAIL() << "no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("shape mismatch"), std::string::npos);
  }
  int ran = 0;
  with_memory_advice("step 1, rollout", {}, [&] { ++ran; });
  EXPECT_EQ(ran, 1);
}

// A supervised stage's remedies name its micro-batch's keys with their values; checkpointing only
// where it is off.
TEST(OutOfMemory, SupervisedRemediesNameTheKeysWithTheirValues) {
  StageSettings s;
  s.optim.mini_batch_size = 4;
  s.sft.max_length = 512;
  EXPECT_EQ(supervised_memory_remedies(s),
            (std::vector<std::string>{"lower mini_batch_size (now 4)", "lower max_length (now 512)",
                                      "set gradient_checkpointing: true"}));
  s.optim.mini_batch_size = 0;
  s.model.gradient_checkpointing = true;
  EXPECT_EQ(supervised_memory_remedies(s),
            (std::vector<std::string>{"lower mini_batch_size (now 0: the step's rows)", "lower max_length (now 512)"}));
}

}  // namespace
}  // namespace grpo::trainer
