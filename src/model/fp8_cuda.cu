// FP8 activation quantizer (model/fp8_cuda.h).
//
// Groups of 128 columns: one warp per (row, group), four values per lane, the group's maximum by
// shuffles. Whole rows: one block per row, the maximum by a block reduction, then a second pass
// over the row (from cache). Both compute s = amax / 448 (1 when amax is 0) and q = x / s rounded
// to nearest even, in fp32 with IEEE division, as the ATen reference does.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>

#include "model/fp8_cuda.h"
#include "util/error.h"

namespace grpo::model::cuda {

namespace {

constexpr int kGroup = 128;
constexpr float kFp8Max = 448.0f;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ __nv_fp8_storage_t to_e4m3(float v) {
  return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ float scale_of(float amax) { return amax > 0.0f ? __fdiv_rn(amax, kFp8Max) : 1.0f; }

// x (M, K) read as zero-padded to (Mp, Kp); q (Mp, Kp); scale (G, Mp).
template <typename T>
__global__ void quantize_groups_kernel(const T* __restrict__ x, __nv_fp8_storage_t* __restrict__ q,
                                       float* __restrict__ scale, int64_t M, int64_t K, int64_t Mp, int64_t Kp,
                                       int64_t G) {
  const int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= Mp * G) return;
  const int64_t m = warp / G, g = warp % G;
  const int64_t col0 = g * kGroup + lane * 4;
  float v[4];
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    v[j] = m < M && col0 + j < K ? to_float(x[m * K + col0 + j]) : 0.0f;
    amax = fmaxf(amax, fabsf(v[j]));
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  const float s = scale_of(amax);
#pragma unroll
  for (int j = 0; j < 4; ++j)
    if (col0 + j < Kp) q[m * Kp + col0 + j] = to_e4m3(__fdiv_rn(v[j], s));
  if (lane == 0) scale[g * Mp + m] = s;  // Mp contiguous
}

template <typename T>
__global__ void quantize_rows_kernel(const T* __restrict__ x, __nv_fp8_storage_t* __restrict__ q,
                                     float* __restrict__ scale, int64_t K) {
  __shared__ float warp_max[32];
  const int64_t m = blockIdx.x;
  const T* row = x + m * K;
  float amax = 0.0f;
  for (int64_t c = threadIdx.x; c < K; c += blockDim.x) amax = fmaxf(amax, fabsf(to_float(row[c])));
  for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = amax;
  __syncthreads();
  if (threadIdx.x < 32) {
    amax = threadIdx.x < blockDim.x / 32 ? warp_max[threadIdx.x] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    if (threadIdx.x == 0) warp_max[0] = amax;
  }
  __syncthreads();
  const float s = scale_of(warp_max[0]);
  for (int64_t c = threadIdx.x; c < K; c += blockDim.x) q[m * K + c] = to_e4m3(__fdiv_rn(to_float(row[c]), s));
  if (threadIdx.x == 0) scale[m] = s;
}

template <typename T>
void launch(const Tensor& x, const Tensor& q, const Tensor& scale, int64_t group) {
  const int64_t M = x.size(0), K = x.size(1), Mp = q.size(0), Kp = q.size(1);
  auto stream = at::cuda::getCurrentCUDAStream();
  auto* qp = reinterpret_cast<__nv_fp8_storage_t*>(q.data_ptr());
  const T* xp = reinterpret_cast<const T*>(x.data_ptr());
  if (group == 0) {
    quantize_rows_kernel<T><<<(unsigned)M, 256, 0, stream>>>(xp, qp, scale.data_ptr<float>(), K);
  } else {
    const int64_t G = (Kp + kGroup - 1) / kGroup, warps = Mp * G;
    const int64_t blocks = (warps + 7) / 8;
    quantize_groups_kernel<T><<<(unsigned)blocks, 256, 0, stream>>>(xp, qp, scale.data_ptr<float>(), M, K, Mp, Kp, G);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

bool fp8_quantize_supported(const Tensor& x) {
  return x.is_cuda() && x.dim() == 2 && x.is_contiguous() &&
         (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat);
}

std::pair<Tensor, Tensor> fp8_quantize(const Tensor& x, int64_t group, int64_t cols, int64_t row_multiple) {
  if (!fp8_quantize_supported(x)) throw Error("fp8_quantize: expected a contiguous (M, K) bf16 or fp32 CUDA tensor");
  if (group != 0 && group != kGroup) throw Error("fp8_quantize: groups are 128 columns or whole rows");
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = x.size(0), K = x.size(1);
  const int64_t Mp = group == 0 ? M : (M + row_multiple - 1) / row_multiple * row_multiple;
  const int64_t Kp = group == 0 ? K : std::max(K, cols);
  Tensor q = at::empty({Mp, Kp}, x.options().dtype(at::kFloat8_e4m3fn));
  Tensor scale = group == 0 ? at::empty({M}, x.options().dtype(at::kFloat))
                            : at::empty({(Kp + kGroup - 1) / kGroup, Mp}, x.options().dtype(at::kFloat));
  if (Mp > 0 && Kp > 0) {
    if (x.scalar_type() == at::kBFloat16)
      launch<__nv_bfloat16>(x, q, scale, group);
    else
      launch<float>(x, q, scale, group);
  } else if (group != 0) {
    scale.fill_(1.0f);
  }
  return {q, group == 0 ? scale : scale.t()};
}

}  // namespace grpo::model::cuda
