// Safetensors reading (mmap, zero-copy views) and writing (atomic), torch-free.
//
// File layout: u64 little-endian N | N bytes of JSON header | data. The header maps each tensor
// name to {"dtype", "shape", "data_offsets": [begin, end]} with offsets relative to the data
// start; "__metadata__" holds string pairs. Opening validates everything a hostile or truncated
// file could get wrong (sizes, offsets, overlaps, dtype/shape vs byte count) and throws
// grpo::Error naming the file and the tensor, so a reader never touches bytes outside the map.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace grpo::io {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2 };

size_t dtype_size(DType dtype);              // bytes per element
const char* dtype_name(DType dtype);         // "F32", "BF16", ...
bool parse_dtype(const std::string& name, DType* out);

struct TensorView {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data;  // points into the file's mapping; valid while the file is open
  size_t nbytes;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws grpo::Error("<path>: <problem> ...") on any defect.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // nullptr when absent.
  const TensorView* find(const std::string& name) const;
  // Throws grpo::Error("<path>: missing tensor <name>") when absent.
  const TensorView& get(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // contiguous, row-major, little-endian
  size_t nbytes;     // must equal numel * dtype_size
};

// Writes a safetensors file atomically (temp file + rename). Tensors are laid out contiguously,
// larger element types first, then by name; the header is padded with spaces to a multiple of 8
// bytes, so every tensor is aligned to its element size.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// A checkpoint's tensors spread over one or more files: `model.safetensors`, or the shards
// listed in `model.safetensors.index.json` ("weight_map": name -> file).
class SafetensorsCheckpoint {
 public:
  // `dir` holds model.safetensors or model.safetensors.index.json.
  static SafetensorsCheckpoint open_dir(const std::string& dir);
  const TensorView* find(const std::string& name) const;
  const TensorView& get(const std::string& name) const;  // throws naming dir and tensor
  std::vector<std::string> names() const;
  const std::string& dir() const { return dir_; }
  // The file that holds `name` (for error messages).
  std::string file_of(const std::string& name) const;

 private:
  std::string dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index in files_
};

}  // namespace grpo::io
