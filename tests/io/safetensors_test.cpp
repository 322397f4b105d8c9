// Safetensors reader/writer: round trip, and every malformed-file case names the file and the
// tensor instead of crashing (this suite also runs under AddressSanitizer).
#include "io/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "util/error.h"

using namespace grpo::io;

namespace {

std::string tmp_path(const std::string& name) {
  static std::string dir = [] {
    std::string d = std::filesystem::temp_directory_path() / ("grpo_io_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir + "/" + name;
}

// A file with header `hdr` (JSON text) and `data_bytes` bytes of data.
std::string write_raw(const std::string& name, const std::string& hdr, size_t data_bytes, int64_t header_len = -1) {
  std::string path = tmp_path(name);
  std::ofstream f(path, std::ios::binary);
  uint64_t n = header_len >= 0 ? (uint64_t)header_len : hdr.size();
  for (int i = 0; i < 8; ++i) f.put(static_cast<char>((n >> (8 * i)) & 0xff));
  f << hdr;
  f << std::string(data_bytes, '\0');
  return path;
}

// Expects open() to throw grpo::Error mentioning every string in `parts`.
void expect_error(const std::string& path, std::initializer_list<std::string> parts) {
  try {
    SafetensorsFile::open(path);
    FAIL() << "no error for " << path;
  } catch (const grpo::Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

}  // namespace

TEST(Safetensors, RoundTripKeepsBytesDtypesShapesAndMetadata) {
  std::vector<float> a = {1.5f, -2.25f, 3.0f, 4.0f, 5.0f, 6.0f};
  std::vector<int64_t> b = {7, -8, 9};
  std::vector<uint16_t> c = {0x3f80, 0xc000};  // bf16 1.0, -2.0
  std::string path = tmp_path("rt.safetensors");
  write_safetensors(path,
                    {{"z.a", DType::F32, {2, 3}, a.data(), a.size() * 4},
                     {"b", DType::I64, {3}, b.data(), b.size() * 8},
                     {"c", DType::BF16, {2}, c.data(), c.size() * 2},
                     {"empty", DType::F32, {0, 4}, nullptr, 0}},
                    {{"format", "pt"}, {"note", "x"}});
  auto f = SafetensorsFile::open(path);
  ASSERT_EQ(f->tensors().size(), 4u);
  const auto& ta = f->get("z.a");
  EXPECT_EQ(ta.dtype, DType::F32);
  EXPECT_EQ(ta.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(ta.data, a.data(), 24), 0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ta.data) % 4, 0u) << "tensors are aligned to their element size";
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f->get("b").data) % 8, 0u);
  EXPECT_EQ(std::memcmp(f->get("b").data, b.data(), 24), 0);
  EXPECT_EQ(std::memcmp(f->get("c").data, c.data(), 4), 0);
  EXPECT_EQ(f->get("empty").nbytes, 0u);
  EXPECT_EQ(f->metadata().at("note"), "x");
  EXPECT_EQ(f->find("nope"), nullptr);
}

TEST(Safetensors, MissingTensorNamesFileAndTensor) {
  std::vector<float> a = {1};
  std::string path = tmp_path("one.safetensors");
  write_safetensors(path, {{"w", DType::F32, {1}, a.data(), 4}});
  auto f = SafetensorsFile::open(path);
  try {
    f->get("model.norm.weight");
    FAIL();
  } catch (const grpo::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.norm.weight"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos);
  }
}

TEST(Safetensors, TruncatedFile) {
  std::string path = tmp_path("short.safetensors");
  std::ofstream(path, std::ios::binary) << "abc";
  expect_error(path, {"truncated"});
}

TEST(Safetensors, TruncatedData) {
  std::vector<float> a(100, 1.0f);
  std::string path = tmp_path("trunc.safetensors");
  write_safetensors(path, {{"big", DType::F32, {100}, a.data(), 400}});
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 10);
  expect_error(path, {"'big'", "outside the data"});
}

TEST(Safetensors, HeaderLengthBeyondFile) {
  expect_error(write_raw("hdrlen.safetensors", "{}", 0, 1000), {"header length 1000"});
  expect_error(write_raw("hdrhuge.safetensors", "{}", 0, int64_t(1) << 62), {"exceeds"});
}

TEST(Safetensors, HeaderNotJson) {
  expect_error(write_raw("nojson.safetensors", "{\"a\": [1, 2", 0), {"not valid JSON"});
  expect_error(write_raw("array.safetensors", "[1, 2]", 0), {"not a JSON object"});
}

TEST(Safetensors, OffsetsOutsideData) {
  expect_error(write_raw("off.safetensors", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
               {"'w'", "outside the data"});
  expect_error(write_raw("rev.safetensors", R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8),
               {"'w'", "reversed"});
}

TEST(Safetensors, OverlappingTensors) {
  expect_error(write_raw("ovl.safetensors",
                         R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                         16),
               {"overlap", "'a'", "'b'"});
  // Overlap with a tensor that is not the immediate predecessor in offset order.
  expect_error(write_raw("ovl2.safetensors",
                         R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]},)"
                         R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                         R"("c":{"dtype":"F32","shape":[1],"data_offsets":[16,20]}})",
                         32),
               {"overlap"});
}

TEST(Safetensors, DtypeShapeMismatchAndUnknownDtype) {
  expect_error(write_raw("mis.safetensors", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
               {"'w'", "need 12 bytes", "give 8"});
  expect_error(write_raw("dt.safetensors", R"({"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", 8),
               {"'w'", "unknown dtype 'F33'"});
  expect_error(write_raw("shape.safetensors", R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
               {"'w'", "non-negative"});
  expect_error(write_raw("ovf.safetensors",
                         R"({"w":{"dtype":"F32","shape":[281474976710656,281474976710656],"data_offsets":[0,8]}})", 8),
               {"'w'", "too large"});
  expect_error(write_raw("noff.safetensors", R"({"w":{"dtype":"F32","shape":[2]}})", 8), {"'w'", "data_offsets"});
}

TEST(Safetensors, ShardedCheckpointViaIndex) {
  std::string dir = tmp_path("sharded");
  std::filesystem::create_directories(dir);
  std::vector<float> a = {1, 2}, b = {3};
  write_safetensors(dir + "/model-00001-of-00002.safetensors", {{"a", DType::F32, {2}, a.data(), 8}});
  write_safetensors(dir + "/model-00002-of-00002.safetensors", {{"b", DType::F32, {1}, b.data(), 4}});
  std::ofstream(dir + "/model.safetensors.index.json")
      << R"({"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})";
  auto ck = SafetensorsCheckpoint::open_dir(dir);
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(reinterpret_cast<const float*>(ck.get("b").data)[0], 3.0f);
  EXPECT_NE(ck.file_of("b").find("00002"), std::string::npos);
  // An index naming a tensor its shard lacks is an error naming both.
  std::ofstream(dir + "/model.safetensors.index.json")
      << R"({"weight_map":{"a":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}})";
  try {
    SafetensorsCheckpoint::open_dir(dir);
    FAIL();
  } catch (const grpo::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'c'"), std::string::npos) << e.what();
  }
  std::ofstream(dir + "/model.safetensors.index.json") << R"({"weight_map":{"a":"../../etc/passwd"}})";
  EXPECT_THROW(SafetensorsCheckpoint::open_dir(dir), grpo::Error);
}
