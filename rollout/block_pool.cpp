#include "rollout/block_pool.h"

#include <algorithm>
#include <string>

#include "util/error.h"

namespace grpo::rollout {

BlockPool::BlockPool(int64_t usable) : usable_(usable) {
  if (usable < 0) throw Error("block pool: negative size");
  free_.resize(usable);
  for (int64_t i = 0; i < usable; ++i) free_[i] = static_cast<int32_t>(usable - 1 - i);
}

int32_t BlockPool::pop() {
  int32_t b = free_.back();
  free_.pop_back();
  peak_used_ = std::max(peak_used_, usable_ - free());
  return b;
}

int32_t BlockPool::take() {
  if (available() < 1) throw Error("block pool: no unreserved block left (" + std::to_string(free()) + " free, " +
                                   std::to_string(reserved_) + " reserved)");
  return pop();
}

void BlockPool::reserve(int64_t n) {
  if (n < 0 || n > available())
    throw Error("block pool: cannot reserve " + std::to_string(n) + " blocks, " + std::to_string(available()) +
                " available");
  reserved_ += n;
}

int32_t BlockPool::take_reserved() {
  if (reserved_ < 1 || free_.empty()) throw Error("block pool: no reserved block to take");
  reserved_ -= 1;
  return pop();
}

void BlockPool::unreserve(int64_t n) {
  if (n < 0 || n > reserved_) throw Error("block pool: cannot unreserve " + std::to_string(n) + " blocks");
  reserved_ -= n;
}

void BlockPool::release(int32_t block) {
  if (block < 0 || block >= usable_ || free() >= usable_) throw Error("block pool: block " + std::to_string(block) + " was not taken");
  free_.push_back(block);
}

}  // namespace grpo::rollout
