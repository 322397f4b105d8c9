// Fused CUDA kernels of the rollout engine's ordinary forwards (model/fused_kernels_cuda.h).
//
// Each replaces a chain of ATen kernels whose launches, not their bytes, cost a decode step its
// time at small batches. RoPE and the expert combination round exactly where the ATen chain
// rounds (every product and sum rounded to the tensor's dtype, no fused multiply-add).
#include <c10/cuda/CUDAGuard.h>

#include "model/block_place.cuh"
#include "model/cuda_launch.h"
#include "model/dependent_launch.cuh"
#include "model/fused_kernels_cuda.h"
#include "model/rope.cuh"
#include "model/row_reduce.cuh"

namespace grpo::model::fused::cuda {

namespace {

constexpr int kThreads = 256;

using cuda_launch::device_t;
using cuda_launch::stream;
void check_launch(const char* what) { cuda_launch::check("fused kernel", what); }

// One rounding to T, as ATen rounds a result of T's arithmetic.
template <typename T>
__device__ __forceinline__ float rnd(float v) {
  return (float)(T)v;
}
template <>
__device__ __forceinline__ float rnd<float>(float v) {
  return v;
}

// RoPE over x (B, T, heads, d) at strides xs (last stride 1) with tables (B, T, d/2): every
// product and every sum rounded to T, as ATen's x1 * cos - x2 * sin and x2 * cos + x1 * sin.
struct RopeShape {
  int64_t T, heads, half;
  int64_t xs0, xs1, xs2;
  bool interleave;
};

template <typename T>
__global__ void rope_kernel(const T* __restrict__ x, const T* __restrict__ cos, const T* __restrict__ sin,
                            T* __restrict__ out, RopeShape s, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;  // over (B, T, heads, half)
  if (i >= n) return;
  const int64_t j = i % s.half, h = (i / s.half) % s.heads, bt = i / (s.half * s.heads);
  const int64_t b = bt / s.T, t = bt % s.T;
  const T* row = x + b * s.xs0 + t * s.xs1 + h * s.xs2;
  const float x1 = (float)row[s.interleave ? 2 * j : j], x2 = (float)row[s.interleave ? 2 * j + 1 : j + s.half];
  const float c = (float)cos[bt * s.half + j], sn = (float)sin[bt * s.half + j];
  T* o = out + (bt * s.heads + h) * 2 * s.half;
  o[j] = rope_rotate<T>(x1, x2, c, sn, false);
  o[j + s.half] = rope_rotate<T>(x1, x2, c, sn, true);
}

// One block per expert e: its row count and the end of its run (the inclusive cumulative count,
// as grouped GEMMs take it), then its pairs in pair order (a block-wide scan of "pair i is mine",
// a chunk of blockDim pairs at a time): token[row] = i / k, inverse[i] = row.
__global__ void group_kernel(const int64_t* __restrict__ experts, int64_t M, int64_t k, int E,
                             int64_t* __restrict__ token, int64_t* __restrict__ inverse, int64_t* __restrict__ counts,
                             int32_t* __restrict__ ends) {
  __shared__ int warp_rows[kThreads / 32];
  __shared__ unsigned int sums[2];
  const int e = blockIdx.x, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) sums[0] = sums[1] = 0;
  __syncthreads();
  unsigned int below = 0, mine = 0;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    const int64_t x = experts[i];
    CUDA_KERNEL_ASSERT(x >= 0 && x < E);
    below += x < e;
    mine += x == e;
  }
  // A warp's sums first: one shared atomic per warp, not one per thread.
  below = __reduce_add_sync(0xffffffffu, below);
  mine = __reduce_add_sync(0xffffffffu, mine);
  if (lane == 0) {
    atomicAdd(&sums[0], below);
    atomicAdd(&sums[1], mine);
  }
  __syncthreads();
  const int64_t first = (int64_t)sums[0], count = (int64_t)sums[1];
  if (threadIdx.x == 0) {
    counts[e] = count;
    ends[e] = (int32_t)(first + count);
  }
  place_in_row_order(M, count, warp_rows, [&](int64_t i) { return experts[i] == e; }, [&](int64_t i, int64_t rank) {
    token[first + rank] = i / k;
    inverse[i] = first + rank;
  });
}

// out[n, h] = (((y[inv[n,0]] w[n,0]) + (y[inv[n,1]] w[n,1])) + ...) + shared[n, h]: each weighted
// part rounded to T as (y * w).to(T), each sum rounded to T as index_add into T does, in pair order.
template <typename T>
__global__ void combine_kernel(const T* __restrict__ y, const int64_t* __restrict__ inverse,
                               const float* __restrict__ weights, const T* __restrict__ shared, T* __restrict__ out,
                               int64_t N, int64_t k, int64_t H) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N * H) return;
  const int64_t n = i / H, h = i % H;
  float acc = 0.0f;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t pair = n * k + j;
    const float part = rnd<T>(__fmul_rn((float)y[inverse[pair] * H + h], weights[pair]));
    acc = rnd<T>(__fadd_rn(acc, part));
  }
  if (shared) acc = __fadd_rn(acc, (float)shared[i]);
  out[i] = (T)acc;
}

// The router after its logits, one warp per token: scores (softmax or sigmoid), the choice
// (scores + the selection bias for noaux_tc), the best topk_group groups where routing is
// group-limited (a group's score: its best choice, or the sum of its best two for noaux_tc), the
// k best choices among them in descending order (ties to the lower index), and their weights:
// the unbiased scores, divided by their sum (plus 1e-20) when normalised, times the scaling. A NaN
// choice (a row of garbage that a CUDA graph pads its batch with) ranks as -inf, and no expert is
// chosen twice: the k experts of a row are always k distinct valid indices.
// Up to kRouterMaxExperts experts and 32 groups; the scores and choices of a warp's token sit in
// shared memory.
constexpr int kRouterWarps = 4;
constexpr int kRouterMaxExperts = 512;

struct RouterShape {
  int64_t N;
  int E, k, groups, topk_group;
  bool sigmoid, noaux_tc, group_limited, normalise;
  float scaling;
};

// The larger of (v, i) and (w, j): the higher value, the lower index on a tie.
__device__ __forceinline__ void keep_best(float& v, int& i, float w, int j) {
  if (w > v || (w == v && j < i)) v = w, i = j;
}

__device__ __forceinline__ void warp_best(float& v, int& i) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) keep_best(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
}

__global__ void __launch_bounds__(kRouterWarps * 32)
    route_kernel(const float* __restrict__ logits, const float* __restrict__ bias, float* __restrict__ scores,
                 int64_t* __restrict__ experts, float* __restrict__ weights, RouterShape s) {
  __shared__ float score_of[kRouterWarps][kRouterMaxExperts], choice_of[kRouterWarps][kRouterMaxExperts];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = (int64_t)blockIdx.x * kRouterWarps + warp;
  if (n >= s.N) return;  // no block-wide synchronisation below
  const float* row = logits + n * s.E;
  float* sc = score_of[warp];
  float* ch = choice_of[warp];
  const float inf = __int_as_float(0x7f800000);
  if (s.sigmoid) {
    for (int e = lane; e < s.E; e += 32) sc[e] = 1.0f / (1.0f + expf(-row[e]));
  } else {
    float top = -inf;
    for (int e = lane; e < s.E; e += 32) top = fmaxf(top, row[e]);
#pragma unroll
    for (int o = 16; o > 0; o /= 2) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, o));
    float sum = 0.0f;
    for (int e = lane; e < s.E; e += 32) {
      sc[e] = expf(row[e] - top);
      sum += sc[e];
    }
#pragma unroll
    for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    for (int e = lane; e < s.E; e += 32) sc[e] /= sum;
  }
  for (int e = lane; e < s.E; e += 32) {
    const float c = s.noaux_tc ? sc[e] + bias[e] : sc[e];
    ch[e] = isnan(c) ? -inf : c;
    scores[n * s.E + e] = sc[e];
  }
  __syncwarp();
  if (s.group_limited && s.groups > 1) {
    const int size = s.E / s.groups;
    float group_score = -inf;
    if (lane < s.groups) {
      float best = -inf, second = -inf;
      for (int e = lane * size; e < (lane + 1) * size; ++e) {
        const float v = ch[e];
        if (v > best) second = best, best = v;
        else if (v > second) second = v;
      }
      group_score = s.noaux_tc ? best + second : best;
    }
    bool kept = false;  // lane g: group g is among the topk_group best
    for (int r = 0; r < s.topk_group; ++r) {
      float v = kept ? -inf : group_score;
      int i = lane < s.groups && !kept ? lane : 1 << 30;
      warp_best(v, i);
      if (lane == i) kept = true;
    }
    __syncwarp();
    if (lane < s.groups && !kept)
      for (int e = lane * size; e < (lane + 1) * size; ++e) ch[e] = -inf;
    __syncwarp();
  }
  float sum = 0.0f, w_mine = 0.0f;
  int mine = -1;  // lane j < k: the j-th expert chosen
  uint32_t taken = 0;  // bit t: expert lane + 32 t is chosen already
  for (int j = 0; j < s.k; ++j) {
    float v = -inf;
    int i = 1 << 30;
    for (int e = lane, t = 0; e < s.E; e += 32, ++t)
      if (!(taken >> t & 1)) keep_best(v, i, ch[e], e);
    warp_best(v, i);  // k <= E: some expert is left, even where every choice left is -inf
    const float w = sc[i];
    if (lane == j) mine = i, w_mine = w;
    sum += w;
    if (i % 32 == lane) taken |= 1u << (i / 32);
  }
  if (lane < s.k) {
    float w = s.normalise ? w_mine / (sum + 1e-20f) : w_mine;
    experts[n * s.k + lane] = mine;
    weights[n * s.k + lane] = w * s.scaling;
  }
}

// MLA's decode step between its projections and its attention (model/deepseek.cpp): block (b, 0)
// writes the latent's RMSNorm and the rotated shared key into cache row slots[b]; block (b, 1 + h)
// head h's query row qc[b, h] = [q_lat[h, b] | its rotated RoPE part] (r + dr). A block a head, so
// that a decode step's few rows still spread over the device. The norm is the batch-invariant
// RMSNorm's (rms_norm_row), the rotations rope_kernel's.
struct MlaPrologueShape {
  int64_t heads, dn, dr, r;
  int64_t q_row, q_head;          // q's strides (last 1)
  int64_t lat_head, lat_row;      // q_lat's strides (heads, B, r; last 1)
  int64_t comp_row;               // comp's row stride (last 1)
  int64_t cache_rows;
  bool interleave;
};

template <typename T>
__global__ void mla_decode_prologue_kernel(const T* __restrict__ q, const T* __restrict__ q_lat,
                                           const T* __restrict__ comp, const T* __restrict__ norm_w,
                                           const T* __restrict__ cos, const T* __restrict__ sin,
                                           const int64_t* __restrict__ slots, T* __restrict__ cache,
                                           T* __restrict__ qc, MlaPrologueShape s, float eps) {
  __shared__ float scratch[kRowThreads];
  const int64_t b = blockIdx.x, half = s.dr / 2, D = s.r + s.dr;
  const T* cs = cos + b * half;
  const T* sn = sin + b * half;
  if (blockIdx.y == 0) {  // the cache row
    const int64_t slot = slots[b];
    CUDA_KERNEL_ASSERT(slot >= 0 && slot < s.cache_rows);
    const T* c = comp + b * s.comp_row;
    T* row = cache + slot * D;
    rms_norm_row<T>(c, norm_w, row, s.r, eps, scratch);
    for (int64_t j = threadIdx.x; j < half; j += blockDim.x) {
      const float x1 = (float)c[s.r + (s.interleave ? 2 * j : j)];
      const float x2 = (float)c[s.r + (s.interleave ? 2 * j + 1 : j + half)];
      row[s.r + j] = rope_rotate<T>(x1, x2, (float)cs[j], (float)sn[j], false);
      row[s.r + j + half] = rope_rotate<T>(x1, x2, (float)cs[j], (float)sn[j], true);
    }
    return;
  }
  const int64_t h = blockIdx.y - 1;  // head h's query row
  T* out = qc + (b * s.heads + h) * D;
  const T* lat = q_lat + h * s.lat_head + b * s.lat_row;
  for (int64_t k = threadIdx.x; k < s.r; k += blockDim.x) out[k] = lat[k];
  const T* pe = q + b * s.q_row + h * s.q_head + s.dn;
  for (int64_t j = threadIdx.x; j < half; j += blockDim.x) {
    const float x1 = (float)pe[s.interleave ? 2 * j : j], x2 = (float)pe[s.interleave ? 2 * j + 1 : j + half];
    out[s.r + j] = rope_rotate<T>(x1, x2, (float)cs[j], (float)sn[j], false);
    out[s.r + j + half] = rope_rotate<T>(x1, x2, (float)cs[j], (float)sn[j], true);
  }
}

// A decoder layer's residual add and the RMSNorm after it, one block per row: sum = x + y rounded to
// T (as ATen's add), then the batch-invariant RMSNorm of that sum. The sum is formed again for the
// output rather than read back (a row is written and read in one kernel).
template <typename T>
__global__ void add_rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ w,
                                    T* __restrict__ sum, T* __restrict__ out, int64_t D, float eps) {
  dependent_launch::let_dependents_start();  // the projections after it may load their weights
  __shared__ float scratch[kRowThreads];
  const int64_t row = (int64_t)blockIdx.x * D;
  float s = 0;
  for (int64_t d = threadIdx.x; d < D; d += kRowThreads) {
    const T v = (T)__fadd_rn((float)x[row + d], (float)y[row + d]);
    sum[row + d] = v;
    s = add_square(s, (float)v);
  }
  const float scale = rms_scale(s, D, eps, scratch);
  for (int64_t d = threadIdx.x; d < D; d += kRowThreads) {
    const float v = (float)(T)__fadd_rn((float)x[row + d], (float)y[row + d]);
    out[row + d] = rms_apply<T>(v, (float)w[d], scale);
  }
}

}  // namespace

Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleave) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), T = x.size(1), heads = x.size(2), d = x.size(3);
  Tensor out = at::empty({B, T, heads, d}, x.options());
  const int64_t n = B * T * heads * (d / 2);
  if (n == 0) return out;
  const RopeShape s{T, heads, d / 2, x.stride(0), x.stride(1), x.stride(2), interleave};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "fused_rope_cuda", [&] {
    using D = device_t<scalar_t>;
    rope_kernel<D><<<(unsigned)((n + kThreads - 1) / kThreads), kThreads, 0, stream()>>>(
        reinterpret_cast<const D*>(x.data_ptr()), reinterpret_cast<const D*>(cos.data_ptr()),
        reinterpret_cast<const D*>(sin.data_ptr()), reinterpret_cast<D*>(out.data_ptr()), s, n);
  });
  check_launch("rope");
  return out;
}

Tensor mla_decode_prologue(const Tensor& q, const Tensor& q_lat, const Tensor& comp, const Tensor& norm_weight,
                           double eps, const Tensor& cos, const Tensor& sin, bool interleave, const Tensor& slots,
                           Tensor& cache) {
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), heads = q.size(1), r = q_lat.size(2), dr = comp.size(1) - r, dn = q.size(2) - dr;
  Tensor qc = at::empty({B, heads, r + dr}, q.options());
  if (B == 0) return qc;
  const MlaPrologueShape s{heads, dn, dr, r, q.stride(0), q.stride(1), q_lat.stride(0), q_lat.stride(1),
                           comp.stride(0), cache.size(0), interleave};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "fused_mla_decode_prologue_cuda", [&] {
    using D = device_t<scalar_t>;
    mla_decode_prologue_kernel<D><<<dim3((unsigned)B, (unsigned)(heads + 1)), kRowThreads, 0, stream()>>>(
        reinterpret_cast<const D*>(q.data_ptr()), reinterpret_cast<const D*>(q_lat.data_ptr()),
        reinterpret_cast<const D*>(comp.data_ptr()), reinterpret_cast<const D*>(norm_weight.data_ptr()),
        reinterpret_cast<const D*>(cos.data_ptr()), reinterpret_cast<const D*>(sin.data_ptr()),
        slots.data_ptr<int64_t>(), reinterpret_cast<D*>(cache.data_ptr()), reinterpret_cast<D*>(qc.data_ptr()), s,
        (float)eps);
  });
  check_launch("mla_decode_prologue");
  return qc;
}

std::pair<Tensor, Tensor> add_rms_norm(const Tensor& x, const Tensor& y, const Tensor& weight, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t D = x.size(-1), M = x.numel() / D;
  Tensor sum = at::empty(x.sizes(), x.options()), out = at::empty(x.sizes(), x.options());
  if (M == 0) return {sum, out};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "fused_add_rms_norm_cuda", [&] {
    using T = device_t<scalar_t>;
    add_rms_norm_kernel<T><<<(unsigned)M, kRowThreads, 0, stream()>>>(
        reinterpret_cast<const T*>(x.data_ptr()), reinterpret_cast<const T*>(y.data_ptr()),
        reinterpret_cast<const T*>(weight.data_ptr()), reinterpret_cast<T*>(sum.data_ptr()),
        reinterpret_cast<T*>(out.data_ptr()), D, (float)eps);
  });
  check_launch("add_rms_norm");
  return {sum, out};
}

ExpertGroups group_by_expert(const Tensor& experts, int64_t num_experts) {
  const c10::cuda::CUDAGuard guard(experts.device());
  Tensor flat = experts.to(at::kLong).contiguous().view({-1});
  const int64_t M = flat.numel();
  ExpertGroups g;
  g.token = at::empty({M}, flat.options());
  g.inverse = at::empty({M}, flat.options());
  g.counts = at::empty({num_experts}, flat.options());
  g.ends = at::empty({num_experts}, flat.options().dtype(at::kInt));
  if (num_experts == 0) return g;
  group_kernel<<<(unsigned)num_experts, kThreads, 0, stream()>>>(
      flat.data_ptr<int64_t>(), M, experts.size(-1), (int)num_experts, g.token.data_ptr<int64_t>(),
      g.inverse.data_ptr<int64_t>(), g.counts.data_ptr<int64_t>(), g.ends.data_ptr<int32_t>());
  check_launch("group_by_expert");
  return g;
}

Tensor combine_experts(const Tensor& y, const Tensor& inverse, const Tensor& weights, int64_t k, const Tensor& shared) {
  const c10::cuda::CUDAGuard guard(y.device());
  const Tensor yc = y.contiguous(), w = weights.to(at::kFloat).contiguous(), inv = inverse.contiguous();
  const int64_t H = yc.size(1), N = k == 0 ? 0 : yc.size(0) / k;
  Tensor sh = shared.defined() ? shared.reshape({N, H}).contiguous() : Tensor();
  Tensor out = at::empty({N, H}, yc.options());
  if (N * H == 0) return sh.defined() ? sh.clone() : out.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, yc.scalar_type(), "fused_combine_experts_cuda", [&] {
    using D = device_t<scalar_t>;
    combine_kernel<D><<<(unsigned)((N * H + kThreads - 1) / kThreads), kThreads, 0, stream()>>>(
        reinterpret_cast<const D*>(yc.data_ptr()), inv.data_ptr<int64_t>(), w.data_ptr<float>(),
        sh.defined() ? reinterpret_cast<const D*>(sh.data_ptr()) : nullptr, reinterpret_cast<D*>(out.data_ptr()), N,
        k, H);
  });
  check_launch("combine_experts");
  return out;
}

Routing route(const Tensor& logits, const Tensor& bias, int64_t k, int64_t groups, int64_t topk_group, bool sigmoid,
               bool noaux_tc, bool group_limited, bool normalise, double scaling) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const Tensor l = logits.contiguous();
  const int64_t N = l.size(0), E = l.size(1);
  Routing r{at::empty({N, E}, l.options()), at::empty({N, k}, l.options().dtype(at::kLong)), at::empty({N, k}, l.options())};
  if (N == 0) return r;
  const RouterShape s{N,       (int)E,         (int)k,        (int)groups, (int)topk_group, sigmoid,
                      noaux_tc, group_limited, normalise, (float)scaling};
  route_kernel<<<(unsigned)((N + kRouterWarps - 1) / kRouterWarps), kRouterWarps * 32, 0, stream()>>>(
      l.data_ptr<float>(), noaux_tc ? bias.data_ptr<float>() : nullptr, r.scores.data_ptr<float>(),
      r.experts.data_ptr<int64_t>(), r.weights.data_ptr<float>(), s);
  check_launch("route");
  return r;
}

}  // namespace grpo::model::fused::cuda
