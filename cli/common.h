// Helpers shared by the torch-side subcommands.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/torch_error.h"
#include "util/error.h"

namespace grpo::cli {

// LibTorch errors carry a C++ backtrace; keep only the message.
template <typename F>
inline int torch_guard(F&& f) {
  try {
    return f();
  } catch (const c10::Error& e) {
    throw Error(torch_message(e));
  }
}

inline at::Device parse_device(const std::string& name) {
  if (name == "cpu") return at::kCPU;
  if (name.rfind("cuda", 0) == 0) {
    if (!torch::cuda::is_available()) throw Error("--device " + name + ": CUDA is not available on this machine");
    at::Device d(name);
    if (d.index() >= (int)torch::cuda::device_count())
      throw Error("--device " + name + ": only " + std::to_string(torch::cuda::device_count()) + " CUDA device(s)");
    return d;
  }
  throw Error("--device '" + name + "': expected cpu, cuda or cuda:N");
}

inline std::vector<int64_t> read_ids(const nlohmann::json& row, const char* key, const std::string& where) {
  if (!row.contains(key)) throw Error(where + ": missing field '" + key + "'");
  const nlohmann::json& v = row[key];
  if (!v.is_array()) throw Error(where + ": field '" + std::string(key) + "' must be an array of token ids");
  std::vector<int64_t> ids;
  ids.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_number_integer())
      throw Error(where + ": " + key + "[" + std::to_string(i) + "] is not an integer token id: " + v[i].dump());
    ids.push_back(v[i].get<int64_t>());
  }
  return ids;
}

}  // namespace grpo::cli
