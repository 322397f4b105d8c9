// The training kernels of model/train_kernels.h: RMSNorm forward and backward, and SwiGLU's
// backward, each one kernel where ATen's chains take six to twelve (and, for SwiGLU over the
// experts' [gate | up] rows, the zero-filled gradient that narrow's backward assembles). They
// round where the ATen chain rounds (each product or sum of the chain rounded to fp32, then once to
// the tensor's dtype where the chain converts), so they agree with it to rounding; the sums over a
// row (and dw's over the rows) go in another order. Compiled without contraction (--fmad=false):
// each of the chain's operations rounds on its own.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <type_traits>

#include "model/cuda_launch.h"
#include "model/kernel_trial.h"
#include "model/rope.cuh"
#include "model/row_vectors.cuh"
#include "model/train_kernels_cuda.h"
#include "util/error.h"

namespace grpo::model::train::cuda {

namespace {

using cuda_launch::device_t;
using cuda_launch::stream;

constexpr int kThreads = 256;

// A fixed tree over the block's values; every thread gets the sum.
__device__ float block_sum(float v, float* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int off = kThreads / 2; off > 0; off >>= 1) {
    if (threadIdx.x < off) scratch[threadIdx.x] += scratch[threadIdx.x + off];
    __syncthreads();
  }
  const float s = scratch[0];
  __syncthreads();
  return s;
}

// One block per row: rstd = rsqrt(sum(x^2) / D + eps); y = w * (x * rstd rounded to T), rounded.
template <typename T>
__global__ void rms_norm_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                        float* __restrict__ rstd, int64_t D, float eps) {
  __shared__ float scratch[kThreads];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * D;
  float s = 0;
  for (int64_t d = threadIdx.x; d < D; d += kThreads) {
    const float v = (float)xr[d];
    s += v * v;
  }
  const float r = rsqrtf(block_sum(s, scratch) / (float)D + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  for (int64_t d = threadIdx.x; d < D; d += kThreads) y[row * D + d] = (T)((float)w[d] * (float)(T)((float)xr[d] * r));
}

// Rows blockIdx.x, blockIdx.x + gridDim.x, ...: with n = x * rstd rounded to T and dn = dy * w
// rounded to T (the chain's mul backward), dx = dn * rstd + (dv / D) * (2 x) rounded to T, where
// dv = -0.5 * sum(dn * x) * rstd^3. dw_part[block] (fp32) sums the block's rows' dy * n, each
// rounded to T, in row order (dw_part null: no weight gradient).
template <typename T>
__global__ void rms_norm_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                                         const float* __restrict__ rstd, T* __restrict__ dx,
                                         float* __restrict__ dw_part, int64_t M, int64_t D) {
  extern __shared__ float smem[];
  float* scratch = smem;           // [kThreads]
  float* dw_acc = smem + kThreads;  // [D] when dw_part
  if (dw_part)
    for (int64_t d = threadIdx.x; d < D; d += kThreads) dw_acc[d] = 0.0f;
  for (int64_t row = blockIdx.x; row < M; row += gridDim.x) {
    const T *dyr = dy + row * D, *xr = x + row * D;
    const float r = rstd[row];
    float s = 0;
    for (int64_t d = threadIdx.x; d < D; d += kThreads) s += (float)(T)((float)dyr[d] * (float)w[d]) * (float)xr[d];
    const float total = block_sum(s, scratch);
    const float r3 = r * r * r;
    const float dv = (-0.5f * total) * r3;
    const float dv_d = dv / (float)D;
    for (int64_t d = threadIdx.x; d < D; d += kThreads) {
      const float xv = (float)xr[d], g = (float)dyr[d];
      const float dn = (float)(T)(g * (float)w[d]);
      dx[row * D + d] = (T)(dn * r + dv_d * (2.0f * xv));
      if (dw_part) dw_acc[d] += (float)(T)(g * (float)(T)(xv * r));
    }
  }
  if (dw_part)
    for (int64_t d = threadIdx.x; d < D; d += kThreads) dw_part[(int64_t)blockIdx.x * D + d] = dw_acc[d];
}

// SwiGLU's backward for one element: s = silu(g) rounded to T; d up = dh * s, d s = dh * up, each
// rounded to T; d g = d s * sig * (1 + g * (1 - sig)) rounded to T (ATen's silu_backward).
template <typename T>
__device__ __forceinline__ void swiglu_gradients(T& dgate, T& dup, float g, float u, float d) {
  const float e = 1.0f + expf(-g);
  const float silu = (float)(T)(g / e), sig = 1.0f / e;
  const float ds = (float)(T)(d * u);
  dup = (T)(d * silu);
  dgate = (T)(ds * sig * (1.0f + g * (1.0f - sig)));
}

// SwiGLU's backward over rows of I values (dh contiguous, the others at their row strides): an
// element a thread.
template <typename T>
__global__ void swiglu_backward_kernel(const T* __restrict__ dh, const T* __restrict__ gate, const T* __restrict__ up,
                                       T* __restrict__ dgate, T* __restrict__ dup, int64_t M, int64_t I, int64_t sg,
                                       int64_t su, int64_t sdg, int64_t sdu) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= M * I) return;
  const int64_t m = i / I, c = i % I;
  swiglu_gradients(dgate[m * sdg + c], dup[m * sdu + c], (float)gate[m * sg + c], (float)up[m * su + c], (float)dh[i]);
}

// The same in 16-byte packs (row_vectors.cuh), where rows_in_packs holds: a pack a thread.
template <typename T>
__global__ void swiglu_backward_packed_kernel(const T* __restrict__ dh, const T* __restrict__ gate,
                                              const T* __restrict__ up, T* __restrict__ dgate, T* __restrict__ dup,
                                              int64_t M, int64_t I, int64_t sg, int64_t su, int64_t sdg, int64_t sdu) {
  const PackAt p = pack_at<T>(M, I);
  if (!p.valid) return;
  const int64_t m = p.row, c = p.col;
  const Pack<T> g = load_pack(gate + m * sg + c), u = load_pack(up + m * su + c), d = load_pack(dh + m * I + c);
  Pack<T> dg, du;
#pragma unroll
  for (int e = 0; e < Pack<T>::kSize; ++e)
    swiglu_gradients(dg.v[e], du.v[e], (float)g.v[e], (float)u.v[e], (float)d.v[e]);
  store_pack(dgate + m * sdg + c, dg);
  store_pack(dup + m * sdu + c, du);
}

void check(const char* what) { cuda_launch::check("training CUDA kernel", what); }

int blocks_for(int64_t M) {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device());
  return (int)std::max<int64_t>(1, std::min<int64_t>(M, 4 * std::max(sms, 1)));
}

}  // namespace

std::pair<Tensor, Tensor> rms_norm_forward(const Tensor& x, const Tensor& w, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor xc = x.contiguous(), wc = w.contiguous();
  const int64_t D = x.size(-1), M = D == 0 ? 0 : xc.numel() / D;
  Tensor y = at::empty_like(xc), rstd = at::empty({M}, xc.options().dtype(at::kFloat));
  if (M == 0) return {y, rstd};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "train_rms_norm_forward", [&] {
    using T = device_t<scalar_t>;
    rms_norm_forward_kernel<T><<<(unsigned)M, kThreads, 0, stream()>>>(
        reinterpret_cast<const T*>(xc.data_ptr()), reinterpret_cast<const T*>(wc.data_ptr()),
        reinterpret_cast<T*>(y.data_ptr()), rstd.data_ptr<float>(), D, (float)eps);
  });
  check("rms_norm forward");
  return {y, rstd};
}

std::pair<Tensor, Tensor> rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                                            bool weight_grad) {
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor dyc = dy.contiguous(), xc = x.contiguous(), wc = w.contiguous();
  const int64_t D = x.size(-1), M = D == 0 ? 0 : xc.numel() / D;
  Tensor dx = at::empty_like(xc);
  if (M == 0) return {dx, weight_grad ? at::zeros_like(wc) : Tensor()};
  const int blocks = blocks_for(M);
  Tensor part = weight_grad ? at::empty({blocks, D}, xc.options().dtype(at::kFloat)) : Tensor();
  if (D > kMaxNormWidth)
    throw Error("training rms_norm backward: rows of " + std::to_string(D) + " values (at most " +
                std::to_string(kMaxNormWidth) + ")");
  const size_t smem = (kThreads + (weight_grad ? D : 0)) * sizeof(float);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "train_rms_norm_backward", [&] {
    using T = device_t<scalar_t>;
    rms_norm_backward_kernel<T><<<(unsigned)blocks, kThreads, smem, stream()>>>(
        reinterpret_cast<const T*>(dyc.data_ptr()), reinterpret_cast<const T*>(xc.data_ptr()),
        reinterpret_cast<const T*>(wc.data_ptr()), rstd.data_ptr<float>(), reinterpret_cast<T*>(dx.data_ptr()),
        weight_grad ? part.data_ptr<float>() : nullptr, M, D);
  });
  check("rms_norm backward");
  return {dx, weight_grad ? part.sum(0).to(w.scalar_type()) : Tensor()};
}

namespace {

void swiglu_backward_into(const Tensor& dh, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup) {
  const int64_t M = dh.size(0), I = dh.size(1);
  if (M * I == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dh.scalar_type(), "train_swiglu_backward", [&] {
    using T = device_t<scalar_t>;
    const auto* d = reinterpret_cast<const T*>(dh.data_ptr());
    const auto* g = reinterpret_cast<const T*>(gate.data_ptr());
    const auto* u = reinterpret_cast<const T*>(up.data_ptr());
    auto* dg = reinterpret_cast<T*>(dgate.data_ptr());
    auto* du = reinterpret_cast<T*>(dup.data_ptr());
    const int64_t sg = gate.stride(0), su = up.stride(0), sdg = dgate.stride(0), sdu = dup.stride(0);
    if (kernel_adopted("packed_swiglu") &&
        rows_in_packs(M, I, sizeof(T), {{d, I}, {g, sg}, {u, su}, {dg, sdg}, {du, sdu}}))
      swiglu_backward_packed_kernel<T><<<pack_blocks<T>(M, I), kPackThreads, 0, stream()>>>(d, g, u, dg, du, M, I, sg,
                                                                                            su, sdg, sdu);
    else
      swiglu_backward_kernel<T><<<(unsigned)((M * I + kThreads - 1) / kThreads), kThreads, 0, stream()>>>(
          d, g, u, dg, du, M, I, sg, su, sdg, sdu);
  });
  check("swiglu backward");
}

}  // namespace

Tensor swiglu_backward(const Tensor& dh, const Tensor& gu) {
  const c10::cuda::CUDAGuard guard(gu.device());
  const int64_t I = dh.size(-1);
  Tensor dh2 = dh.reshape({-1, I}).contiguous(), gu2 = gu.reshape({-1, 2 * I});
  if (gu2.stride(1) != 1) gu2 = gu2.contiguous();
  Tensor dgu = at::empty({dh2.size(0), 2 * I}, gu2.options());
  Tensor dgate = dgu.narrow(1, 0, I), dup = dgu.narrow(1, I, I);
  swiglu_backward_into(dh2, gu2.narrow(1, 0, I), gu2.narrow(1, I, I), dgate, dup);
  return dgu.view(gu.sizes());
}

std::pair<Tensor, Tensor> swiglu_backward(const Tensor& dh, const Tensor& gate, const Tensor& up) {
  const c10::cuda::CUDAGuard guard(gate.device());
  const int64_t I = dh.size(-1);
  Tensor dh2 = dh.reshape({-1, I}).contiguous(), g2 = gate.reshape({-1, I}), u2 = up.reshape({-1, I});
  if (g2.stride(1) != 1) g2 = g2.contiguous();
  if (u2.stride(1) != 1) u2 = u2.contiguous();
  Tensor dgate = at::empty({dh2.size(0), I}, g2.options()), dup = at::empty({dh2.size(0), I}, u2.options());
  swiglu_backward_into(dh2, g2, u2, dgate, dup);
  return {dgate.view(gate.sizes()), dup.view(up.sizes())};
}


// ---------------------------------------------------------------------------------------------
// The routed experts' dispatch and combine as gathers (model/moe.cpp, "gather_combine"): a
// token's k rows in the grouped order are found through slot (pair p = n k + j sits at row
// slot[p]), so no atomic adds and no fp32 copy of the (N k, H) products.

namespace {

// V values of T in one 16-byte load, or one value (V = 1) where rows are not 16-byte multiples.
template <typename T, int V>
struct alignas(V == 1 ? alignof(T) : 16) Pack {
  T v[V];
};

// One block per token n: out[n, c] = (T)(sum over j in order of (T)(rows[slot[p], c] * w[p])),
// p = n k + j, in fp32 (w null: the rows' values themselves).
template <typename T, int V>
__global__ void gather_sum_kernel(const T* __restrict__ rows, const int64_t* __restrict__ slot,
                                  const float* __restrict__ w, T* __restrict__ out, int64_t H, int k) {
  __shared__ int64_t src[kMaxTopK];
  __shared__ float scale[kMaxTopK];
  const int64_t n = blockIdx.x;
  if (threadIdx.x < k) {
    src[threadIdx.x] = slot[n * k + threadIdx.x] * H;
    scale[threadIdx.x] = w ? w[n * k + threadIdx.x] : 1.0f;
  }
  __syncthreads();
  for (int64_t c = (int64_t)threadIdx.x * V; c < H; c += (int64_t)blockDim.x * V) {
    float acc[V];
#pragma unroll
    for (int e = 0; e < V; ++e) acc[e] = 0.0f;
    for (int j = 0; j < k; ++j) {
      const Pack<T, V> r = *reinterpret_cast<const Pack<T, V>*>(rows + src[j] + c);
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e] += w ? (float)(T)((float)r.v[e] * scale[j]) : (float)r.v[e];
    }
    Pack<T, V> o;
#pragma unroll
    for (int e = 0; e < V; ++e) o.v[e] = (T)acc[e];
    *reinterpret_cast<Pack<T, V>*>(out + n * H + c) = o;
  }
}

// One block per token n, for each of its pairs p = n k + j (row r = slot[p]):
// drows[r, c] = (T)(g[n, c] * w[p]); dw[p] = sum over c of g[n, c] * rows[r, c] in fp32, each
// thread's columns in order, then the warps' shuffles and the warps in order (a fixed tree).
template <typename T, int V>
__global__ void combine_backward_kernel(const T* __restrict__ g, const T* __restrict__ rows,
                                        const int64_t* __restrict__ slot, const float* __restrict__ w,
                                        T* __restrict__ drows, float* __restrict__ dw, int64_t H, int k) {
  __shared__ int64_t src[kMaxTopK];
  __shared__ float scale[kMaxTopK];
  __shared__ float partial[kMaxTopK][kThreads / 32];
  const int64_t n = blockIdx.x;
  if (threadIdx.x < k) {
    src[threadIdx.x] = slot[n * k + threadIdx.x] * H;
    scale[threadIdx.x] = w[n * k + threadIdx.x];
  }
  __syncthreads();
  float dot[kMaxTopK];
#pragma unroll
  for (int j = 0; j < kMaxTopK; ++j) dot[j] = 0.0f;
  for (int64_t c = (int64_t)threadIdx.x * V; c < H; c += (int64_t)blockDim.x * V) {
    const Pack<T, V> gp = *reinterpret_cast<const Pack<T, V>*>(g + n * H + c);
#pragma unroll
    for (int j = 0; j < kMaxTopK; ++j) {
      if (j >= k) break;
      const Pack<T, V> r = *reinterpret_cast<const Pack<T, V>*>(rows + src[j] + c);
      Pack<T, V> d;
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float gv = (float)gp.v[e];
        dot[j] += gv * (float)r.v[e];
        d.v[e] = (T)(gv * scale[j]);
      }
      *reinterpret_cast<Pack<T, V>*>(drows + src[j] + c) = d;
    }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int j = 0; j < kMaxTopK; ++j) {
    if (j >= k) break;
    float v = dot[j];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0) partial[j][warp] = v;
  }
  __syncthreads();
  if (threadIdx.x < k) {
    float s = 0.0f;
    for (int i = 0; i < (int)(blockDim.x / 32); ++i) s += partial[threadIdx.x][i];
    dw[n * k + threadIdx.x] = s;
  }
}

// Launches kernel<T, V> with 16-byte packs where every row starts on a 16-byte boundary.
template <typename T, typename Launch>
void with_pack(const Tensor& a, const Tensor& b, int64_t H, Launch launch) {
  constexpr int kPack = 16 / sizeof(T);
  const bool packed = H % kPack == 0 && reinterpret_cast<uintptr_t>(a.data_ptr()) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(b.data_ptr()) % 16 == 0;
  if (packed)
    launch(std::integral_constant<int, kPack>{});
  else
    launch(std::integral_constant<int, 1>{});
}

unsigned threads_for(int64_t H, int64_t pack) {
  return (unsigned)std::clamp<int64_t>((H / pack + 31) / 32 * 32, 32, kThreads);
}

}  // namespace

Tensor gather_sum(const Tensor& rows, const Tensor& slot, const Tensor& weights, int64_t k) {
  const c10::cuda::CUDAGuard guard(rows.device());
  if (k < 1 || k > kMaxTopK) throw Error("gather_sum: " + std::to_string(k) + " rows a token (1 to 16)");
  Tensor r = rows.contiguous(), s = slot.contiguous();
  Tensor wc = weights.defined() ? weights.contiguous() : Tensor();
  const int64_t H = r.size(1), N = s.numel() / k;
  Tensor out = at::empty({N, H}, r.options());
  if (N == 0 || H == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, r.scalar_type(), "train_gather_sum", [&] {
    using T = device_t<scalar_t>;
    with_pack<T>(r, out, H, [&](auto pack) {
      constexpr int V = decltype(pack)::value;
      gather_sum_kernel<T, V><<<(unsigned)N, threads_for(H, V), 0, stream()>>>(
          reinterpret_cast<const T*>(r.data_ptr()), s.data_ptr<int64_t>(), wc.defined() ? wc.data_ptr<float>() : nullptr,
          reinterpret_cast<T*>(out.data_ptr()), H, (int)k);
    });
  });
  check("gather_sum");
  return out;
}

std::pair<Tensor, Tensor> combine_backward(const Tensor& g, const Tensor& rows, const Tensor& slot,
                                           const Tensor& weights, int64_t k) {
  const c10::cuda::CUDAGuard guard(rows.device());
  if (k < 1 || k > kMaxTopK) throw Error("combine_backward: " + std::to_string(k) + " rows a token (1 to 16)");
  Tensor gc = g.contiguous(), r = rows.contiguous(), s = slot.contiguous(), wc = weights.contiguous();
  const int64_t H = r.size(1), N = s.numel() / k;
  Tensor drows = at::empty_like(r), dw = at::empty({N * k}, wc.options());
  if (N == 0) return {drows, dw};
  if (H == 0) return {drows, dw.zero_()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, r.scalar_type(), "train_combine_backward", [&] {
    using T = device_t<scalar_t>;
    with_pack<T>(r, gc, H, [&](auto pack) {
      constexpr int V = decltype(pack)::value;
      combine_backward_kernel<T, V><<<(unsigned)N, threads_for(H, V), 0, stream()>>>(
          reinterpret_cast<const T*>(gc.data_ptr()), reinterpret_cast<const T*>(r.data_ptr()), s.data_ptr<int64_t>(),
          wc.data_ptr<float>(), reinterpret_cast<T*>(drows.data_ptr()), dw.data_ptr<float>(), H, (int)k);
    });
  });
  check("combine backward");
  return {drows, dw};
}

// ---------------------------------------------------------------------------------------------
// MLA's attention inputs in training ("mla_assemble"): the query, key and value that
// MLAImpl's ATen chain assembles (narrow, apply_rope's seven kernels, cat, expand), one kernel
// forward and two backward, with the chain's roundings: every RoPE product and sum rounded to T.

namespace {

// Output position jj of RoPE over pe (d = 2 * half values, last stride 1), [first outputs | second
// outputs], for the pairs (x1, x2) = (pe[2j], pe[2j + 1]) interleaved, else (pe[j], pe[j + half]).
template <typename T>
__device__ __forceinline__ T rope_at(const T* pe, const T* cos, const T* sin, int64_t jj, int64_t half,
                                     bool interleave) {
  const int64_t j = jj < half ? jj : jj - half;
  const float x1 = (float)pe[interleave ? 2 * j : j], x2 = (float)pe[interleave ? 2 * j + 1 : j + half];
  return rope_rotate<T>(x1, x2, (float)cos[j], (float)sin[j], jj >= half);
}

// The pair j of RoPE's input position p, and whether p holds its second value.
__device__ __forceinline__ void rope_pair_of(int64_t p, int64_t half, bool interleave, int64_t& j, bool& second) {
  j = interleave ? p / 2 : (p < half ? p : p - half);
  second = interleave ? (p % 2 == 1) : (p >= half);
}

struct MlaShape {
  int64_t T, heads, dn, half, dv;
  int64_t pe_s0, pe_s1;  // the forward's k_pe: its strides over B and T (the backward writes d k_pe contiguous)
  bool interleave;
};

// A warp per row of (B, T, heads) (row_vectors.cuh's blocks; the row's indices divided out once,
// not per value): query and key at each column below dn + dr, value at each column below dv.
template <typename T>
__global__ void mla_inputs_kernel(const T* __restrict__ q, const T* __restrict__ kv, const T* __restrict__ k_pe,
                                  const T* __restrict__ cos, const T* __restrict__ sin, T* __restrict__ query,
                                  T* __restrict__ key, T* __restrict__ value, MlaShape s, int64_t rows) {
  const int64_t row = (int64_t)blockIdx.x * kWarpRows + threadIdx.y;
  if (row >= rows) return;
  const int64_t dq = s.dn + 2 * s.half, bt = row / s.heads;
  const T* qr = q + row * dq;
  const T* kvr = kv + row * (s.dn + s.dv);
  const T *cs = cos + bt * s.half, *sn = sin + bt * s.half;
  const T* pe = k_pe + (bt / s.T) * s.pe_s0 + (bt % s.T) * s.pe_s1;
  T *qo = query + row * dq, *ko = key + row * dq, *vo = value + row * s.dv;
  for (int64_t c = threadIdx.x; c < dq || c < s.dv; c += 32) {
    if (c < s.dn) {
      qo[c] = qr[c];
      ko[c] = kvr[c];
    } else if (c < dq) {
      qo[c] = rope_at(qr + s.dn, cs, sn, c - s.dn, s.half, s.interleave);
      ko[c] = rope_at(pe, cs, sn, c - s.dn, s.half, s.interleave);
    }
    if (c < s.dv) vo[c] = kvr[s.dn + c];
  }
}

struct GradStrides {
  int64_t q0, q1, q2, k0, k1, k2, v0, v1, v2;  // (B, T, heads) strides of d query, d key, d value
};

// A warp per row of (B, T, heads), as the forward: d q = [d q_nope | RoPE backward of d q_pe] and
// d kv = [d k_nope | d value].
template <typename T>
__global__ void mla_inputs_backward_kernel(const T* __restrict__ dquery, const T* __restrict__ dkey,
                                           const T* __restrict__ dvalue, const T* __restrict__ cos,
                                           const T* __restrict__ sin, T* __restrict__ dq, T* __restrict__ dkv,
                                           MlaShape s, GradStrides g, int64_t rows) {
  const int64_t row = (int64_t)blockIdx.x * kWarpRows + threadIdx.y;
  if (row >= rows) return;
  const int64_t width = s.dn + 2 * s.half, h = row % s.heads, bt = row / s.heads;
  const int64_t b = bt / s.T, t = bt % s.T;
  const T* gq = dquery + b * g.q0 + t * g.q1 + h * g.q2;
  const T* gk = dkey + b * g.k0 + t * g.k1 + h * g.k2;
  const T* gv = dvalue + b * g.v0 + t * g.v1 + h * g.v2;
  const T *cs = cos + bt * s.half, *sn = sin + bt * s.half;
  T *dqo = dq + row * width, *dkvo = dkv + row * (s.dn + s.dv);
  for (int64_t c = threadIdx.x; c < width || c < s.dn + s.dv; c += 32) {
    if (c < s.dn) {
      dqo[c] = gq[c];
    } else if (c < width) {
      int64_t j;
      bool second;
      rope_pair_of(c - s.dn, s.half, s.interleave, j, second);
      dqo[c] = rope_rotate_grad<T>((float)gq[s.dn + j], (float)gq[s.dn + j + s.half], (float)cs[j], (float)sn[j],
                                   second);
    }
    if (c < s.dn + s.dv) dkvo[c] = c < s.dn ? gk[c] : gv[c - s.dn];
  }
}

// Thread i over (B, T, dr): the shared key part's gradient. The heads' gradients of each rotated
// value summed in fp32 in head order and rounded to T (expand's backward), then RoPE's backward.
template <typename T>
__global__ void mla_key_pe_backward_kernel(const T* __restrict__ dkey, const T* __restrict__ cos,
                                           const T* __restrict__ sin, T* __restrict__ dk_pe, MlaShape s,
                                           GradStrides g, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t dr = 2 * s.half, p = i % dr, bt = i / dr, b = bt / s.T, t = bt % s.T;
  int64_t j;
  bool second;
  rope_pair_of(p, s.half, s.interleave, j, second);
  const T* gk = dkey + b * g.k0 + t * g.k1 + s.dn;
  float dy1 = 0.0f, dy2 = 0.0f;
  for (int64_t h = 0; h < s.heads; ++h) {
    dy1 += (float)gk[h * g.k2 + j];
    dy2 += (float)gk[h * g.k2 + j + s.half];
  }
  dk_pe[i] = rope_rotate_grad<T>(rope_round<T>(dy1), rope_round<T>(dy2), (float)cos[bt * s.half + j],
                                 (float)sin[bt * s.half + j], second);
}

unsigned blocks_over(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

}  // namespace

std::array<Tensor, 3> mla_inputs(const Tensor& q, const Tensor& kv, const Tensor& k_pe, const Tensor& cos,
                                 const Tensor& sin, bool interleave, int64_t dn) {
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), T = q.size(1), heads = q.size(2), dq = q.size(3), dr = k_pe.size(2);
  const int64_t dv = kv.size(3) - dn;
  Tensor query = at::empty({B, T, heads, dq}, q.options()), key = at::empty_like(query);
  Tensor value = at::empty({B, T, heads, dv}, q.options());
  const int64_t rows = B * T * heads;
  if (rows * std::max(dq, dv) == 0) return {query, key, value};
  const MlaShape s{T, heads, dn, dr / 2, dv, k_pe.stride(0), k_pe.stride(1), interleave};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "train_mla_inputs", [&] {
    using D = device_t<scalar_t>;
    mla_inputs_kernel<D><<<warp_row_blocks(rows), warp_row_threads(), 0, stream()>>>(
        reinterpret_cast<const D*>(q.data_ptr()), reinterpret_cast<const D*>(kv.data_ptr()),
        reinterpret_cast<const D*>(k_pe.data_ptr()), reinterpret_cast<const D*>(cos.data_ptr()),
        reinterpret_cast<const D*>(sin.data_ptr()), reinterpret_cast<D*>(query.data_ptr()),
        reinterpret_cast<D*>(key.data_ptr()), reinterpret_cast<D*>(value.data_ptr()), s, rows);
  });
  check("mla inputs");
  return {query, key, value};
}

std::array<Tensor, 3> mla_inputs_backward(const Tensor& dquery_in, const Tensor& dkey_in, const Tensor& dvalue_in,
                                          const Tensor& cos, const Tensor& sin, bool interleave, int64_t dn) {
  const c10::cuda::CUDAGuard guard(dquery_in.device());
  auto last_dense = [](const Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); };
  const Tensor dquery = last_dense(dquery_in), dkey = last_dense(dkey_in), dvalue = last_dense(dvalue_in);
  const int64_t B = dquery.size(0), T = dquery.size(1), heads = dquery.size(2), dq = dquery.size(3);
  const int64_t dr = dq - dn, dv = dvalue.size(3);
  Tensor dq_out = at::empty({B, T, heads, dq}, dquery.options());
  Tensor dkv = at::empty({B, T, heads, dn + dv}, dquery.options());
  Tensor dk_pe = at::empty({B, T, dr}, dquery.options());
  if (B * T * heads == 0) return {dq_out, dkv, dk_pe};
  const MlaShape s{T, heads, dn, dr / 2, dv, T * dr, dr, interleave};
  const GradStrides g{dquery.stride(0), dquery.stride(1), dquery.stride(2), dkey.stride(0), dkey.stride(1),
                      dkey.stride(2),   dvalue.stride(0), dvalue.stride(1), dvalue.stride(2)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dquery.scalar_type(), "train_mla_inputs_backward", [&] {
    using D = device_t<scalar_t>;
    mla_inputs_backward_kernel<D><<<warp_row_blocks(B * T * heads), warp_row_threads(), 0, stream()>>>(
        reinterpret_cast<const D*>(dquery.data_ptr()), reinterpret_cast<const D*>(dkey.data_ptr()),
        reinterpret_cast<const D*>(dvalue.data_ptr()), reinterpret_cast<const D*>(cos.data_ptr()),
        reinterpret_cast<const D*>(sin.data_ptr()), reinterpret_cast<D*>(dq_out.data_ptr()),
        reinterpret_cast<D*>(dkv.data_ptr()), s, g, B * T * heads);
    const int64_t m = B * T * dr;
    mla_key_pe_backward_kernel<D><<<blocks_over(m), kThreads, 0, stream()>>>(
        reinterpret_cast<const D*>(dkey.data_ptr()), reinterpret_cast<const D*>(cos.data_ptr()),
        reinterpret_cast<const D*>(sin.data_ptr()), reinterpret_cast<D*>(dk_pe.data_ptr()), s, g, m);
  });
  check("mla inputs backward");
  return {dq_out, dkv, dk_pe};
}

}  // namespace grpo::model::train::cuda
