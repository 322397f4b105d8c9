// The rollout engine's token sampler in one kernel (model/fused_kernels.h, fused::sample;
// "fused_sampler"), where ATen's chain runs a dozen: two softmaxes over the vocabulary, a
// division, a cumulative sum, a search, gathers, an argmax and a select.
//
// One block of 1024 threads a row; thread t owns a contiguous chunk of the row (read in 16-byte
// pieces where the row is aligned). Three passes: the row's maximum and its first index; the sum
// of exp(x - max) for the log-probability and, per chunk in order, the sums of exp(x / T - max / T);
// then an inclusive scan of the chunks' sums, and the thread whose chunk holds u times the total
// walks its chunk again to the first value whose running sum passes it (inverse-CDF sampling, as
// the chain does over the whole row). Every reduction has a fixed order, so a row's token does not
// depend on its batch.
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <cstdint>

#include "model/cuda_launch.h"
#include "model/fused_kernels_cuda.h"

namespace grpo::model::fused::cuda {

namespace {

constexpr int kSampleThreads = 1024;
constexpr int kWarps = kSampleThreads / 32;

// Thread t's values of a row of V: [begin, end), chunks of a multiple of 4 values.
struct Chunk {
  int64_t begin, end;
};
__device__ __forceinline__ Chunk chunk_of(int64_t V) {
  const int64_t C = (V + 4 * kSampleThreads - 1) / (4 * kSampleThreads) * 4;
  const int64_t begin = min(V, (int64_t)threadIdx.x * C);
  return {begin, min(V, begin + C)};
}

// f(j, x[j]) over the chunk in increasing j.
template <typename F>
__device__ __forceinline__ void each_value(const float* __restrict__ row, Chunk c, bool aligned, F f) {
  int64_t j = c.begin;
  if (aligned)
    for (; j + 4 <= c.end; j += 4) {
      const float4 q = *reinterpret_cast<const float4*>(row + j);
      f(j, q.x);
      f(j + 1, q.y);
      f(j + 2, q.z);
      f(j + 3, q.w);
    }
  for (; j < c.end; ++j) f(j, row[j]);
}

// The block's largest value and its smallest index, every thread getting it.
__device__ __forceinline__ void block_argmax(float& v, int64_t& i, float* vals, int64_t* idx) {
  auto better = [](float ov, int64_t oi, float v, int64_t i) { return ov > v || (ov == v && oi < i); };
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, i, off);
    if (better(ov, oi, v, i)) v = ov, i = oi;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) vals[warp] = v, idx[warp] = i;
  __syncthreads();
  v = vals[lane];
  i = idx[lane];
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, i, off);
    if (better(ov, oi, v, i)) v = ov, i = oi;
  }
  __syncthreads();
}

// The block's sum in a fixed order (each warp's tree, then the warps' sums by the same tree).
__device__ __forceinline__ float block_sum(float v, float* vals) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) vals[warp] = v;
  __syncthreads();
  v = vals[lane];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  __syncthreads();
  return v;
}

// The block's inclusive scan of v in thread order (each warp's, then the warps' totals').
__device__ __forceinline__ float block_inclusive_scan(float v, float* vals) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int off = 1; off < 32; off <<= 1) {
    const float o = __shfl_up_sync(0xffffffffu, v, off);
    if (lane >= off) v += o;
  }
  if (lane == 31) vals[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = vals[lane];
    for (int off = 1; off < 32; off <<= 1) {
      const float o = __shfl_up_sync(0xffffffffu, w, off);
      if (lane >= off) w += o;
    }
    vals[lane] = w;
  }
  __syncthreads();
  if (warp > 0) v += vals[warp - 1];
  __syncthreads();
  return v;
}

__global__ void __launch_bounds__(kSampleThreads) sample_kernel(const float* __restrict__ logits, int64_t V,
                                                                const float* __restrict__ temperature,
                                                                const float* __restrict__ uniform,
                                                                int64_t* __restrict__ token,
                                                                float* __restrict__ logprob) {
  __shared__ float vals[kWarps];
  __shared__ int64_t idx[kWarps];
  __shared__ float incl[kSampleThreads];
  __shared__ int64_t pick;
  const int64_t b = blockIdx.x;
  const float* row = logits + b * V;
  const bool aligned = reinterpret_cast<uintptr_t>(row) % 16 == 0;
  const Chunk c = chunk_of(V);

  float m = -INFINITY;
  int64_t arg = V;
  each_value(row, c, aligned, [&](int64_t j, float v) {
    if (v > m || arg == V) m = v, arg = j;
  });
  block_argmax(m, arg, vals, idx);

  const float t = temperature[b];
  const bool greedy = !(t > 0.0f);
  const float mt = greedy ? 0.0f : m / t;
  float z = 0.0f, zt = 0.0f;
  each_value(row, c, aligned, [&](int64_t, float v) {
    z += expf(v - m);
    if (!greedy) zt += expf(v / t - mt);
  });
  z = block_sum(z, vals);
  if (threadIdx.x == 0) pick = greedy ? arg : -1;
  if (!greedy) {
    const float mine = block_inclusive_scan(zt, vals);
    incl[threadIdx.x] = mine;
    __syncthreads();
    const float before = threadIdx.x ? incl[threadIdx.x - 1] : 0.0f, total = incl[kSampleThreads - 1];
    const float target = uniform[b] * total;
    // The chunk holding the target walks to its token; where rounding put the target at the very
    // end (no chunk holds it), the last chunk with mass gives its last token with mass.
    const bool holds = before <= target && target < mine;
    const bool last = before < mine && mine == total && !(target < total);
    if (holds || last) {
      const float local = target - before;
      float run = 0.0f;
      int64_t found = -1, last_kept = -1;
      each_value(row, c, aligned, [&](int64_t j, float v) {
        const float e = expf(v / t - mt);
        run += e;
        if (e > 0.0f) last_kept = j;
        if (found < 0 && holds && run > local) found = j;
      });
      pick = found >= 0 ? found : last_kept;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int64_t tok = pick >= 0 ? pick : arg;
    token[b] = tok;
    logprob[b] = row[tok] - m - logf(z);
  }
}

}  // namespace

std::pair<Tensor, Tensor> sample(const Tensor& logits, const Tensor& temperature, const Tensor& uniform) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0), V = logits.size(1);
  Tensor token = at::empty({B}, logits.options().dtype(at::kLong));
  Tensor logprob = at::empty({B}, logits.options());
  if (B == 0) return {token, logprob};
  sample_kernel<<<(unsigned)B, kSampleThreads, 0, cuda_launch::stream()>>>(
      logits.data_ptr<float>(), V, temperature.data_ptr<float>(), uniform.data_ptr<float>(),
      token.data_ptr<int64_t>(), logprob.data_ptr<float>());
  cuda_launch::check("fused kernel", "sample");
  return {token, logprob};
}

}  // namespace grpo::model::fused::cuda
