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

// As fp8::quantize_activations_reference, bit for bit: group 128 -> e4m3 (M, K) and scales
// (M, ceil(K/128)) with strides (1, M); group 0 -> one scale per row, (M).
std::pair<Tensor, Tensor> fp8_quantize(const Tensor& x, int64_t group);

}  // namespace grpo::model::cuda
