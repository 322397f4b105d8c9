// The KV cache's blocks, handed out by index. A prompt group is admitted only when the blocks all
// its samples may ever need are available: it takes its prompt blocks at once and reserves the
// rest, which its samples take one at a time as they grow, so no sequence can run out of cache
// mid-decode. Finished sequences give back what they took and what they never used.
#pragma once

#include <cstdint>
#include <vector>

namespace grpo::rollout {

class BlockPool {
 public:
  // Blocks 0 .. usable-1, handed out lowest first.
  explicit BlockPool(int64_t usable);

  int64_t usable() const { return usable_; }
  int64_t free() const { return (int64_t)free_.size(); }
  int64_t reserved() const { return reserved_; }
  int64_t available() const { return free() - reserved_; }  // free and not promised
  int64_t peak_used() const { return peak_used_; }

  // A block nobody reserved. Throws grpo::Error when none is available.
  int32_t take();
  // Promises `n` blocks (throws when fewer are available), and takes one promised block.
  void reserve(int64_t n);
  int32_t take_reserved();
  // Promised blocks that will not be taken (a sequence ended early).
  void unreserve(int64_t n);
  // A taken block comes back.
  void release(int32_t block);

 private:
  int32_t pop();
  int64_t usable_;
  std::vector<int32_t> free_;  // a stack: the lowest index on top
  int64_t reserved_ = 0;
  int64_t peak_used_ = 0;
};

}  // namespace grpo::rollout
