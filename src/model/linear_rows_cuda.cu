// A linear layer over a decode step's few rows (model/fused_kernels.h, fused::linear_rows and
// grouped_rows; "linear_rows"): y (M, N) = x (M, K) W^T (+ bias) for M <= 8 rows in bf16,
// where cuBLAS's tiles for a handful of rows read the weights at a third to a half of the copy
// bandwidth; and the routed experts' products of such a step, each expert's few rows with its own
// weights (a block row of the grid per expert that has rows).
//
// A warp an output column: its lanes read the column's weight row in 16-byte pieces (512 bytes a
// warp a step, four steps in flight, or eight on trial: "deep_rows"), each piece once, and
// multiply it with the same values of every row of x (from L1: all warps of a block read the same
// x), accumulating in fp32; the warp's sums are added by a shuffle tree, the bias added in fp32,
// and the result rounded once.
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "model/cuda_launch.h"
#include "model/dependent_launch.cuh"
#include "model/fused_kernels_cuda.h"
#include "model/group_with_rows.cuh"
#include "model/kernel_trial.h"
#include "util/error.h"

namespace grpo::model::fused::cuda {

namespace {

using bf16 = __nv_bfloat16;
constexpr int kColumnsPerBlock = 8;  // a warp each
constexpr int kRowsMax = 8;

__device__ __forceinline__ void unpack8(const uint4& v, float f[8]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 p = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&words[i]));
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}

// R: rows a pass (the rows in passes of R, each reading the weights again: one pass where M <= R).
// S: the steps of 256 columns a lane has in flight (S * 256 columns: all of a 2,048-wide row at 8).
// With `ends` (the groups' cumulative row counts of E groups), block row j takes the j-th group
// that has rows, e (each warp finds it), its rows ends[e - 1] .. ends[e] - 1 with
// weights w[e]: the grid has a block row per grouped row at most (no more groups have rows), not
// one per group, so that the blocks of the groups without rows (58 of V2-Lite's 64 experts for one
// token) are not launched only to return. At most R rows a group where each of R tokens routes to
// an expert once, more where a row's choices repeat (rows of garbage a CUDA graph pads its batch
// with), which cost a pass more but are never read out of bounds.
template <int R, int S>
__global__ void __launch_bounds__(32 * kColumnsPerBlock) linear_rows_kernel(const bf16* __restrict__ x,
                                                                            const bf16* __restrict__ w,
                                                                            const bf16* __restrict__ bias,
                                                                            bf16* __restrict__ y, int M, int64_t N,
                                                                            int64_t K, const int* __restrict__ ends,
                                                                            int E) {
  dependent_launch::let_dependents_start();
  const int lane = threadIdx.x % 32;
  const int64_t n = (int64_t)blockIdx.x * kColumnsPerBlock + threadIdx.x / 32;
  if (ends) {
    dependent_launch::wait_for_inputs();  // the groups come from the kernels before
    const int e = group_with_rows(ends, E, lane);
    if (e < 0) return;  // fewer groups with rows than block rows
    const int first = e ? ends[e - 1] : 0;
    M = ends[e] - first;
    x += (int64_t)first * K;
    y += (int64_t)first * N;
    w += (int64_t)e * N * K;
  }
  if (n >= N) return;
  const bf16* wr = w + n * K;
  // The lane's next kSteps pieces of the weight row (a piece every 256 columns), asked for a chunk
  // ahead of their use. The weights are no kernel's output: the first chunk is asked for before
  // waiting for the kernels before (x is), so that with a dependent launch it loads while they end.
  constexpr int kSteps = S;
  uint4 ahead[kSteps];
  auto fetch = [&](int64_t k0) {
#pragma unroll
    for (int i = 0; i < kSteps; ++i) {
      const int64_t k = k0 + (int64_t)256 * i;
      ahead[i] = k < K ? __ldg(reinterpret_cast<const uint4*>(wr + k)) : make_uint4(0, 0, 0, 0);
    }
  };
  for (int r0 = 0; r0 < M; r0 += R, x += (int64_t)R * K, y += (int64_t)R * N) {
    const int rows = min(R, M - r0);
    fetch(8 * lane);
    if (r0 == 0) dependent_launch::wait_for_inputs();
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    for (int64_t k0 = 8 * lane; k0 < K; k0 += (int64_t)256 * kSteps) {
      uint4 piece[kSteps];
#pragma unroll
      for (int i = 0; i < kSteps; ++i) piece[i] = ahead[i];
      if (k0 + (int64_t)256 * kSteps < K) fetch(k0 + (int64_t)256 * kSteps);
#pragma unroll
      for (int i = 0; i < kSteps; ++i) {
        const int64_t k = k0 + (int64_t)256 * i;
        if (k >= K) break;
        float wf[8];
        unpack8(piece[i], wf);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (r >= rows) break;
          float xf[8];
          unpack8(*reinterpret_cast<const uint4*>(x + r * K + k), xf);
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[r] += wf[e] * xf[e];
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (r >= rows) break;
      float s = acc[r];
      for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
      if (lane == 0) y[r * N + n] = __float2bfloat16_rn(bias ? s + __bfloat162float(bias[n]) : s);
    }
  }
}

template <int R>
void launch(bool dependent, const bf16* x, const bf16* w, const bf16* bias, bf16* y, int M, int64_t N, int64_t K,
            const int* ends = nullptr, int64_t groups = 1, int64_t block_rows = 1) {
  const dim3 blocks((unsigned)((N + kColumnsPerBlock - 1) / kColumnsPerBlock), (unsigned)block_rows);
  const auto kernel = kernel_on_trial("deep_rows") ? linear_rows_kernel<R, 8> : linear_rows_kernel<R, 4>;
  dependent_launch::launch(kernel, blocks, dim3(32 * kColumnsPerBlock), 0, cuda_launch::stream(), dependent, x, w, bias,
                           y, M, N, K, ends, (int)groups);
}

}  // namespace

Tensor linear_rows(const Tensor& x, const Tensor& weight, const Tensor& bias, bool dependent) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t K = x.size(-1), M = x.numel() / K, N = weight.size(0);
  if (M > kRowsMax) throw Error("fused linear_rows: " + std::to_string(M) + " rows (at most 8)");
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  Tensor y = at::empty(shape, x.options());
  if (M == 0 || N == 0) return y;
  const auto* xp = reinterpret_cast<const bf16*>(x.data_ptr());
  const auto* wp = reinterpret_cast<const bf16*>(weight.data_ptr());
  const auto* bp = bias.defined() ? reinterpret_cast<const bf16*>(bias.data_ptr()) : nullptr;
  auto* yp = reinterpret_cast<bf16*>(y.data_ptr());
  if (M == 1)
    launch<1>(dependent, xp, wp, bp, yp, (int)M, N, K);
  else if (M == 2)
    launch<2>(dependent, xp, wp, bp, yp, (int)M, N, K);
  else if (M <= 4)
    launch<4>(dependent, xp, wp, bp, yp, (int)M, N, K);
  else
    launch<8>(dependent, xp, wp, bp, yp, (int)M, N, K);
  cuda_launch::check("fused kernel", "linear_rows");
  return y;
}

Tensor grouped_rows(const Tensor& x, const Tensor& weight, const Tensor& ends, bool dependent) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t E = weight.size(0), N = weight.size(1), K = weight.size(2), rows = x.size(0);
  Tensor y = at::empty({rows, N}, x.options());
  if (rows == 0 || N == 0) return y;
  // Groups with rows: at most one a row, and at most E.
  launch<kRowsMax>(dependent, reinterpret_cast<const bf16*>(x.data_ptr()), reinterpret_cast<const bf16*>(weight.data_ptr()),
                   nullptr, reinterpret_cast<bf16*>(y.data_ptr()), 0, N, K, ends.data_ptr<int>(), E, std::min(E, rows));
  cuda_launch::check("fused kernel", "grouped_rows");
  return y;
}

}  // namespace grpo::model::fused::cuda
