// A per-thread switch that is on while a ScopedFlag<Tag> constructed with `on` lives. Scopes nest:
// each restores the state it found. Tag only names the switch, so that each has its own state.
#pragma once

namespace grpo {

template <class Tag>
class ScopedFlag {
 public:
  explicit ScopedFlag(bool on) : previous_(state()) { state() = on; }
  ~ScopedFlag() { state() = previous_; }
  ScopedFlag(const ScopedFlag&) = delete;
  ScopedFlag& operator=(const ScopedFlag&) = delete;

  static bool on() { return state(); }

 private:
  static bool& state() {
    thread_local bool s = false;
    return s;
  }
  bool previous_;
};

}  // namespace grpo
