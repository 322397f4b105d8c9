#include "trainer/tensorboard.h"

#include <unistd.h>

#include <chrono>
#include <cstring>

#include <algorithm>
#include <cmath>
#include <limits>

#include "tensorboard.pb.h"
#include "util/error.h"

namespace grpo::trainer {

uint32_t crc32c(const void* data, size_t n) {
  static uint32_t table[256];
  static bool init = [] {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0x82F63B78u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    return true;
  }();
  (void)init;
  uint32_t c = 0xFFFFFFFFu;
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

namespace {

uint32_t masked(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

double now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

EventWriter::EventWriter(const std::string& dir) {
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  path_ = dir + "/events.out.tfevents." + std::to_string((long long)now()) + "." + host;
  f_ = std::fopen(path_.c_str(), "ab");
  if (!f_) throw Error(path_ + ": cannot create the TensorBoard event file");
  tensorboard::Event ev;
  ev.set_wall_time(now());
  ev.set_file_version("brain.Event:2");
  std::string bytes;
  ev.SerializeToString(&bytes);
  record(bytes);
  flush();
}

EventWriter::~EventWriter() {
  if (f_) std::fclose(f_);
}

void EventWriter::record(const std::string& data) {
  uint64_t len = data.size();
  char hdr[8];
  std::memcpy(hdr, &len, 8);
  uint32_t lc = masked(crc32c(hdr, 8)), dc = masked(crc32c(data.data(), data.size()));
  std::fwrite(hdr, 1, 8, f_);
  std::fwrite(&lc, 1, 4, f_);
  std::fwrite(data.data(), 1, data.size(), f_);
  std::fwrite(&dc, 1, 4, f_);
}

namespace {
// One Event{wall_time, step, summary{value}} record's bytes.
std::string summary_event(tensorboard::Summary::Value value, int64_t step) {
  tensorboard::Event ev;
  ev.set_wall_time(now());
  ev.set_step(step);
  *ev.mutable_summary()->add_value() = std::move(value);
  std::string bytes;
  ev.SerializeToString(&bytes);
  return bytes;
}
}  // namespace

void EventWriter::scalar(const std::string& tag, double value, int64_t step) {
  tensorboard::Summary::Value v;
  v.set_tag(tag);
  v.set_simple_value((float)value);
  record(summary_event(std::move(v), step));
}

void EventWriter::histogram(const std::string& tag, const std::vector<double>& values, int64_t step, int buckets) {
  if (values.empty() || buckets < 1) return;
  tensorboard::Summary::Value v;
  v.set_tag(tag);
  tensorboard::HistogramProto* h = v.mutable_histo();
  const auto [lo, hi] = std::minmax_element(values.begin(), values.end());
  double sum = 0, squares = 0;
  for (double x : values) {
    sum += x;
    squares += x * x;
  }
  h->set_min(*lo);
  h->set_max(*hi);
  h->set_num((double)values.size());
  h->set_sum(sum);
  h->set_sum_squares(squares);
  // Equal-width buckets over [min, max]; bucket_limit holds right edges, the last one open-ended.
  const int n = *hi > *lo ? buckets : 1;
  std::vector<double> counts(n, 0.0);
  for (double x : values) {
    int b = *hi > *lo ? (int)((x - *lo) / (*hi - *lo) * n) : 0;
    counts[std::min(std::max(b, 0), n - 1)] += 1;
  }
  for (int b = 0; b < n; ++b) {
    h->add_bucket_limit(b + 1 == n ? std::numeric_limits<double>::max() : *lo + (*hi - *lo) * (b + 1) / n);
    h->add_bucket(counts[b]);
  }
  record(summary_event(std::move(v), step));
}

void EventWriter::text(const std::string& tag, const std::string& markdown, int64_t step) {
  tensorboard::Summary::Value v;
  v.set_tag(tag);
  v.mutable_metadata()->mutable_plugin_data()->set_plugin_name("text");
  tensorboard::TensorProto* t = v.mutable_tensor();
  t->set_dtype(tensorboard::DT_STRING);
  t->mutable_tensor_shape();  // a scalar string
  t->add_string_val(markdown);
  record(summary_event(std::move(v), step));
}

void EventWriter::flush() { std::fflush(f_); }

}  // namespace grpo::trainer
