#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace grpo::io {

using json = nlohmann::json;

namespace {
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the reference implementation's limit

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::F64, "F64", 8},         {DType::F32, "F32", 4},         {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},       {DType::I64, "I64", 8},         {DType::I32, "I32", 4},
    {DType::I16, "I16", 2},         {DType::I8, "I8", 1},           {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},       {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1},
};

[[noreturn]] void fail(const std::string& path, const std::string& what) { throw Error(path + ": " + what); }

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }
}  // namespace

size_t dtype_size(DType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.size;
  return 0;
}
const char* dtype_name(DType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.name;
  return "?";
}
bool parse_dtype(const std::string& name, DType* out) {
  for (const auto& d : kDTypes)
    if (name == d.name) {
      *out = d.dtype;
      return true;
    }
  return false;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // a FIFO must not block the open
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail(path, "cannot stat");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "not a regular file");
  }
  size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail(path, fmt::format("truncated file: {} bytes, smaller than the 8-byte header length", size));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) fail(path, std::string("mmap failed: ") + std::strerror(errno));
  f->map_ = map;
  f->map_size_ = size;
  const uint8_t* bytes = static_cast<const uint8_t*>(map);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxHeaderBytes)
    fail(path, fmt::format("header length {} exceeds the {} byte limit", header_len, kMaxHeaderBytes));
  if (header_len > size - 8)
    fail(path, fmt::format("header length {} runs past the end of the file ({} bytes)", header_len, size));
  const char* hdr = reinterpret_cast<const char*>(bytes + 8);
  json header;
  if (json_depth(std::string_view(hdr, header_len)) > kMaxJsonDepth) fail(path, "header nests too deep");
  try {
    header = json::parse(hdr, hdr + header_len);
  } catch (const json::exception& e) {
    fail(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail(path, "header is not a JSON object");

  const uint8_t* data = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  struct Range {
    uint64_t begin, end;
    size_t idx;
  };
  std::vector<Range> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(path, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail(path, "__metadata__ value for '" + m.key() + "' is not a string");
        f->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto where = [&](const std::string& what) { fail(path, "tensor '" + name + "': " + what); };
    if (!v.is_object()) where("entry is not an object");
    if (!v.contains("dtype") || !v["dtype"].is_string()) where("missing or non-string dtype");
    if (!v.contains("shape") || !v["shape"].is_array()) where("missing or non-array shape");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      where("data_offsets must be [begin, end]");
    TensorView t;
    t.name = name;
    std::string dt = v["dtype"].get<std::string>();
    if (!parse_dtype(dt, &t.dtype)) where("unknown dtype '" + dt + "'");
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) where("shape entries must be non-negative integers");
      uint64_t s = d.get<uint64_t>();
      if (s > (1ull << 48) || mul_overflows(numel, s, &numel)) where("shape is too large");
      t.shape.push_back(static_cast<int64_t>(s));
    }
    const auto& off = v["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      where("data_offsets must be non-negative integers");
    uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (b > e) where(fmt::format("data_offsets [{}, {}] are reversed", b, e));
    if (e > data_size)
      where(fmt::format("data_offsets [{}, {}] lie outside the data section ({} bytes; file truncated?)", b, e,
                        data_size));
    uint64_t want = 0;
    if (mul_overflows(numel, dtype_size(t.dtype), &want)) where("byte size overflows");
    if (e - b != want)
      where(fmt::format("dtype {} and shape [{}] need {} bytes but data_offsets give {}", dt,
                        fmt::join(t.shape, ", "), want, e - b));
    t.data = data + b;
    t.nbytes = static_cast<size_t>(want);
    ranges.push_back({b, e, f->tensors_.size()});
    f->tensors_.push_back(std::move(t));
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // After sorting by begin, a range overlaps an earlier one iff it starts before the furthest end
  // seen so far (zero-sized tensors occupy nothing).
  const Range* furthest = nullptr;
  for (const Range& c : ranges) {
    if (c.end == c.begin) continue;
    if (furthest && c.begin < furthest->end)
      fail(path, fmt::format("tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", f->tensors_[furthest->idx].name,
                             furthest->begin, furthest->end, f->tensors_[c.idx].name, c.begin, c.end));
    if (!furthest || c.end > furthest->end) furthest = &c;
  }
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->index_[f->tensors_[i].name] = i;
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorView& SafetensorsFile::get(const std::string& name) const {
  const TensorView* t = find(name);
  if (!t) fail(path_, "missing tensor '" + name + "'");
  return *t;
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorToWrite*> order;
  for (const auto& t : tensors) order.push_back(&t);
  // Larger element types first, then by name (as the reference writer does): with the header
  // padded to 8 bytes, every tensor then starts at a multiple of its element size.
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) {
    size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorToWrite* t : order) {
    uint64_t numel = 1;
    for (int64_t s : t->shape) numel *= static_cast<uint64_t>(s);
    if (numel * dtype_size(t->dtype) != t->nbytes)
      throw Error(path + ": tensor '" + t->name + "': byte count does not match dtype and shape");
    if (header.contains(t->name)) throw Error(path + ": duplicate tensor '" + t->name + "'");
    header[t->name] = {{"dtype", dtype_name(t->dtype)}, {"shape", t->shape}, {"data_offsets", {offset, offset + t->nbytes}}};
    offset += t->nbytes;
  }
  std::string hdr = header.dump();
  while ((8 + hdr.size()) % 8 != 0) hdr.push_back(' ');
  std::string out;
  out.reserve(8 + hdr.size() + offset);
  uint64_t n = hdr.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += hdr;
  for (const TensorToWrite* t : order) out.append(static_cast<const char*>(t->data), t->nbytes);
  write_file_atomic(path, out);
}

SafetensorsCheckpoint SafetensorsCheckpoint::open_dir(const std::string& dir) {
  SafetensorsCheckpoint ck;
  ck.dir_ = dir;
  std::string index_path = dir + "/model.safetensors.index.json";
  std::string single = dir + "/model.safetensors";
  if (file_exists(index_path)) {
    json index = parse_json(read_file(index_path), index_path);
    if (!index.contains("weight_map") || !index["weight_map"].is_object())
      throw Error(index_path + ": missing object 'weight_map'");
    std::map<std::string, size_t> file_idx;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      if (!it.value().is_string()) throw Error(index_path + ": weight_map['" + it.key() + "'] is not a string");
      std::string file = it.value().get<std::string>();
      if (file.find('/') != std::string::npos || file == "..")
        throw Error(index_path + ": weight_map['" + it.key() + "'] names a path outside the directory: " + file);
      auto f = file_idx.find(file);
      if (f == file_idx.end()) {
        ck.files_.push_back(SafetensorsFile::open(dir + "/" + file));
        f = file_idx.emplace(file, ck.files_.size() - 1).first;
      }
      if (!ck.files_[f->second]->find(it.key()))
        throw Error(dir + "/" + file + ": missing tensor '" + it.key() + "' (listed in model.safetensors.index.json)");
      ck.where_[it.key()] = f->second;
    }
  } else if (file_exists(single)) {
    ck.files_.push_back(SafetensorsFile::open(single));
    for (const auto& t : ck.files_[0]->tensors()) ck.where_[t.name] = 0;
  } else {
    throw Error(dir + ": no model.safetensors or model.safetensors.index.json");
  }
  return ck;
}

const TensorView* SafetensorsCheckpoint::find(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? nullptr : files_[it->second]->find(name);
}

const TensorView& SafetensorsCheckpoint::get(const std::string& name) const {
  const TensorView* t = find(name);
  if (!t) throw Error(dir_ + ": missing tensor '" + name + "'");
  return *t;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

std::string SafetensorsCheckpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? dir_ : files_[it->second]->path();
}

}  // namespace grpo::io
