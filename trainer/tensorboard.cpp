#include "trainer/tensorboard.h"

#include <unistd.h>

#include <chrono>
#include <cstring>

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

void varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += (char)(v | 0x80);
    v >>= 7;
  }
  out += (char)v;
}
void key(std::string& out, int field, int wire) { varint(out, (uint64_t)(field << 3 | wire)); }
void fixed64(std::string& out, double d) {
  char b[8];
  std::memcpy(b, &d, 8);
  out.append(b, 8);
}
void fixed32(std::string& out, float f) {
  char b[4];
  std::memcpy(b, &f, 4);
  out.append(b, 4);
}
void bytes(std::string& out, int field, const std::string& s) {
  key(out, field, 2);
  varint(out, s.size());
  out += s;
}

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
  std::string ev;  // Event{wall_time = 1, file_version = 3}
  key(ev, 1, 1);
  fixed64(ev, now());
  bytes(ev, 3, "brain.Event:2");
  record(ev);
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

void EventWriter::scalar(const std::string& tag, double value, int64_t step) {
  std::string val;  // Summary.Value{tag = 1, simple_value = 2}
  bytes(val, 1, tag);
  key(val, 2, 5);
  fixed32(val, (float)value);
  std::string summary;  // Summary{value = 1}
  bytes(summary, 1, val);
  std::string ev;  // Event{wall_time = 1, step = 2, summary = 5}
  key(ev, 1, 1);
  fixed64(ev, now());
  key(ev, 2, 0);
  varint(ev, (uint64_t)step);
  bytes(ev, 5, summary);
  record(ev);
}

void EventWriter::flush() { std::fflush(f_); }

}  // namespace grpo::trainer
