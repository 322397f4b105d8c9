// TensorBoard event files (events.out.tfevents.*), written without TensorFlow: TFRecord framing
// (length, masked CRC-32C of the length, the Event message, its masked CRC-32C) around Event
// messages from proto/tensorboard.proto. Scalars, histograms and text (markdown, shown by
// TensorBoard's text plugin). Torch-free; the header includes no generated code.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace grpo::trainer {

class EventWriter {
 public:
  // Creates <dir>/events.out.tfevents.<seconds>.<host>; throws grpo::Error when it cannot.
  explicit EventWriter(const std::string& dir);
  ~EventWriter();
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  void scalar(const std::string& tag, double value, int64_t step);
  // The values' distribution in `buckets` equal-width buckets between their min and max.
  void histogram(const std::string& tag, const std::vector<double>& values, int64_t step, int buckets = 30);
  // Markdown text (TensorBoard's Text tab).
  void text(const std::string& tag, const std::string& markdown, int64_t step);
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
