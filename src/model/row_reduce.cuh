// A CUDA block's fixed-order reduction over a row, and RMSNorm of one row with it: shared by the
// batch-invariant kernels and the fused decode kernels, so that both round a row's norm alike.
#pragma once

namespace grpo::model {

constexpr int kRowThreads = 256;

// A fixed tree over the block's 256 values; every thread gets the result.
template <typename Op>
__device__ __forceinline__ float block_reduce(float v, float* scratch, Op op) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int off = kRowThreads / 2; off > 0; off >>= 1) {
    if (threadIdx.x < off) scratch[threadIdx.x] = op(scratch[threadIdx.x], scratch[threadIdx.x + off]);
    __syncthreads();
  }
  const float r = scratch[0];
  __syncthreads();
  return r;
}

struct Add {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct Max {
  __device__ float operator()(float a, float b) const { return a > b ? a : b; }
};

// RMSNorm's parts, every operation rounding on its own (no fused multiply-add, whatever the file's
// --fmad): a thread's running sum of squares, the row's scale 1 / sqrt(mean + eps) from the
// threads' sums (block_reduce's tree), and one output w * (v * scale rounded to T), rounded to T.
__device__ __forceinline__ float add_square(float s, float v) { return __fadd_rn(s, __fmul_rn(v, v)); }
__device__ __forceinline__ float rms_scale(float partial, int64_t D, float eps, float* scratch) {
  const float total = block_reduce(partial, scratch, Add());
  return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(total, (float)D), eps)));
}
template <typename T>
__device__ __forceinline__ T rms_apply(float v, float w, float scale) {
  return (T)__fmul_rn(w, (float)(T)__fmul_rn(v, scale));
}

// RMSNorm of the row x (D values) with its weight w into out, by a block of kRowThreads threads:
// thread t sums the squares of x[t], x[t + 256], ... in order.
template <typename T>
__device__ __forceinline__ void rms_norm_row(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out,
                                             int64_t D, float eps, float* scratch) {
  float s = 0;
  for (int64_t d = threadIdx.x; d < D; d += kRowThreads) s = add_square(s, (float)x[d]);
  const float scale = rms_scale(s, D, eps, scratch);
  for (int64_t d = threadIdx.x; d < D; d += kRowThreads) out[d] = rms_apply<T>((float)x[d], (float)w[d], scale);
}

}  // namespace grpo::model
