// TensorBoard event files (events.out.tfevents.*) with scalar summaries, written without
// TensorFlow: TFRecord framing (length, masked CRC-32C of the length, the Event protobuf, its
// masked CRC-32C) around hand-encoded Event{wall_time, step, summary{value{tag, simple_value}}}.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace grpo::trainer {

class EventWriter {
 public:
  // Creates <dir>/events.out.tfevents.<seconds>.<host>; throws grpo::Error when it cannot.
  explicit EventWriter(const std::string& dir);
  ~EventWriter();
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;
  void scalar(const std::string& tag, double value, int64_t step);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void record(const std::string& event);
  std::FILE* f_ = nullptr;
  std::string path_;
};

// CRC-32C (Castagnoli), as TFRecord uses it; exposed for tests.
uint32_t crc32c(const void* data, size_t n);

}  // namespace grpo::trainer
