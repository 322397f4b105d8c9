// The FP8 activation quantizer of model/fp8.h as one CUDA kernel (compiled when the CUDA compiler
// is found, which defines GRPO_FP8_CUDA): the decode step quantizes the input of every projection,
// and the same arithmetic in ATen operations would be six kernels each time.
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace grpo::model::cuda {

using at::Tensor;

// x (M, K) contiguous, bf16 or fp32, on CUDA.
bool fp8_quantize_supported(const Tensor& x);

// As fp8::quantize_activations_reference, bit for bit: group 128 -> e4m3 (Mp, Kp) of the input
// zero-padded (Mp = M rounded up to row_multiple, Kp = max(K, cols)) and scales (Mp, ceil(Kp/128))
// with strides (1, Mp); group 0 -> e4m3 (M, K) and one scale per row, (M).
std::pair<Tensor, Tensor> fp8_quantize(const Tensor& x, int64_t group, int64_t cols = 0, int64_t row_multiple = 1);

}  // namespace grpo::model::cuda
