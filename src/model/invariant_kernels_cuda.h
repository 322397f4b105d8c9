// The CUDA side of model/invariant_kernels.h (compiled when the CUDA compiler is found, which
// defines GRPO_INVARIANT_CUDA). Same contracts; inputs on one CUDA device.
#pragma once

#include <ATen/ATen.h>

#include <utility>
#include <vector>

namespace grpo::model::invariant::cuda {

using at::Tensor;

Tensor matmul_nt(const Tensor& x, const Tensor& w);
// (group, first row, rows) tiles of at most 16 rows, on `device`, for groups of the given sizes.
Tensor group_tiles(const std::vector<int64_t>& sizes, at::Device device);
Tensor grouped_matmul_nt(const Tensor& x, const Tensor& w, const Tensor& tiles, int64_t num_tiles);
Tensor rms_normalize(const Tensor& x, double eps);
Tensor softmax(const Tensor& x);
Tensor log_softmax(const Tensor& x);
Tensor row_sum(const Tensor& x);
Tensor silu(const Tensor& x);
Tensor sigmoid(const Tensor& x);
std::pair<Tensor, Tensor> rope_cos_sin(const Tensor& positions, const Tensor& inv_freq);
// table, start, count: int64 on the device; max_keys: the largest count.
Tensor attention(const Tensor& q, const Tensor& cache, const Tensor& table, const Tensor& start, const Tensor& count,
                 int64_t max_keys, int64_t block_size, int64_t kv_heads, int64_t key_base, int64_t key_stride,
                 int64_t key_width, int64_t value_base, int64_t value_stride, int64_t value_width, double scale);

}  // namespace grpo::model::invariant::cuda
