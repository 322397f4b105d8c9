// What the project's CUDA kernel files share on the host side: CUDA's own types for ATen's
// floating types, the current stream, and the check after a launch. Included by .cu files only.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>
#include <type_traits>

#include "util/error.h"

namespace grpo::model::cuda_launch {

template <typename scalar_t>
using device_t = std::conditional_t<std::is_same_v<scalar_t, at::BFloat16>, __nv_bfloat16,
                                    std::conditional_t<std::is_same_v<scalar_t, at::Half>, __half, scalar_t>>;

inline cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }

// Throws "<kernels> (<what>): <CUDA's error>" when the last launch failed.
inline void check(const char* kernels, const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw Error(std::string(kernels) + " (" + what + "): " + cudaGetErrorString(e));
}

}  // namespace grpo::model::cuda_launch
