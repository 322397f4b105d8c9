// CUDA versions of the batch-invariant kernels (model/invariant_kernels.h). Each output element
// is computed by one fixed sequence of operations that depends on the problem's inner sizes alone
// (K, the row length, the keys read), never on the number of rows, the row's position, or the
// tiles around it:
//   - products: bf16 tensor-core steps of k = 16 in increasing k, accumulated in fp32, no split-K;
//     the tile shapes only decide which outputs a block computes, not how;
//   - row reductions: thread t sums elements t, t + 256, ... in order, then a fixed tree;
//   - attention: one block per (query, head), one score per key (a warp's fixed shuffle tree),
//     softmax and the weighted sum of values in key order.
// Compiled without contraction (--fmad=false), like the CPU file.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "model/invariant_kernels_cuda.h"
#include "util/error.h"

namespace grpo::model::invariant::cuda {

namespace {

using namespace nvcuda;

constexpr int kBM = 16, kBN = 64, kBK = 128, kWarps = 4, kPad = 8;

// out rows [row0, row0 + rows) of x (sorted for experts) times w (N, K) [+ expert * N * K].
// Tile table (expert, first row, rows) per blockIdx.x when given; else tile = 16 consecutive rows.
__global__ void gemm_nt_bf16_kernel(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                                    float* __restrict__ out, int64_t M, int64_t N, int64_t K,
                                    const int64_t* __restrict__ tiles, bool vec) {
  __shared__ __align__(32) __nv_bfloat16 As[kBM][kBK + kPad];
  __shared__ __align__(32) __nv_bfloat16 Bs[kBN][kBK + kPad];
  __shared__ __align__(32) float Cs[kWarps][16][16];
  int64_t row0, rows;
  const __nv_bfloat16* wp = w;
  if (tiles) {
    wp = w + tiles[3 * blockIdx.x] * N * K;
    row0 = tiles[3 * blockIdx.x + 1];
    rows = tiles[3 * blockIdx.x + 2];
  } else {
    row0 = (int64_t)blockIdx.x * kBM;
    rows = min((int64_t)kBM, M - row0);
  }
  const int64_t col0 = (int64_t)blockIdx.y * kBN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const __nv_bfloat16 zero = __float2bfloat16(0.0f);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  for (int64_t k0 = 0; k0 < K; k0 += kBK) {
    if (vec) {  // K % 8 == 0 and 16-byte aligned rows: eight values per load, all in range or none
      constexpr int V = kBK / 8;
      const uint4 none = make_uint4(0, 0, 0, 0);
      for (int i = threadIdx.x; i < kBM * V; i += blockDim.x) {
        const int r = i / V, c = (i % V) * 8;
        const int64_t k = k0 + c;
        *reinterpret_cast<uint4*>(&As[r][c]) =
            (r < rows && k < K) ? *reinterpret_cast<const uint4*>(x + (row0 + r) * K + k) : none;
      }
      for (int i = threadIdx.x; i < kBN * V; i += blockDim.x) {
        const int r = i / V, c = (i % V) * 8;
        const int64_t n = col0 + r, k = k0 + c;
        *reinterpret_cast<uint4*>(&Bs[r][c]) = (n < N && k < K) ? *reinterpret_cast<const uint4*>(wp + n * K + k) : none;
      }
    } else {
      for (int i = threadIdx.x; i < kBM * kBK; i += blockDim.x) {
        const int r = i / kBK, c = i % kBK;
        const int64_t k = k0 + c;
        As[r][c] = (r < rows && k < K) ? x[(row0 + r) * K + k] : zero;
      }
      for (int i = threadIdx.x; i < kBN * kBK; i += blockDim.x) {
        const int r = i / kBK, c = i % kBK;
        const int64_t n = col0 + r, k = k0 + c;
        Bs[r][c] = (n < N && k < K) ? wp[n * K + k] : zero;
      }
    }
    __syncthreads();
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
      wmma::load_matrix_sync(a, &As[0][kk], kBK + kPad);
      wmma::load_matrix_sync(b, &Bs[warp * 16][kk], kBK + kPad);
      wmma::mma_sync(acc, a, b, acc);
    }
    __syncthreads();
  }
  wmma::store_matrix_sync(&Cs[warp][0][0], acc, 16, wmma::mem_row_major);
  __syncwarp();
  for (int i = lane; i < 256; i += 32) {
    const int r = i / 16, c = i % 16;
    const int64_t n = col0 + warp * 16 + c;
    if (r < rows && n < N) out[(row0 + r) * N + n] = Cs[warp][r][c];
  }
}

// fp32 products on CUDA cores: one thread per output, k in increasing order.
__global__ void gemm_nt_f32_kernel(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ out,
                                   int64_t M, int64_t N, int64_t K, const int64_t* __restrict__ tiles) {
  int64_t row0, rows;
  const float* wp = w;
  if (tiles) {
    wp = w + tiles[3 * blockIdx.x] * N * K;
    row0 = tiles[3 * blockIdx.x + 1];
    rows = tiles[3 * blockIdx.x + 2];
  } else {
    row0 = (int64_t)blockIdx.x * kBM;
    rows = min((int64_t)kBM, M - row0);
  }
  const int r = threadIdx.x / kBN;
  const int64_t n = (int64_t)blockIdx.y * kBN + threadIdx.x % kBN;
  if (r >= rows || n >= N) return;
  const float* a = x + (row0 + r) * K;
  const float* b = wp + n * K;
  float s = 0;
  for (int64_t k = 0; k < K; ++k) s += a[k] * b[k];
  out[(row0 + r) * N + n] = s;
}

constexpr int kRowThreads = 256;

// A fixed tree over the block's 256 values; every thread gets the result.
template <typename Op>
__device__ float block_reduce(float v, float* scratch, Op op) {
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

// mode 0: x * rsqrt(mean(x^2) + eps); 1: softmax; 2: log-softmax; 3: sum (out has one column).
__global__ void row_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t D, int mode, float eps) {
  __shared__ float scratch[kRowThreads];
  const float* r = x + (int64_t)blockIdx.x * D;
  if (mode == 0 || mode == 3) {
    float s = 0;
    for (int64_t d = threadIdx.x; d < D; d += kRowThreads) s += mode == 0 ? r[d] * r[d] : r[d];
    const float total = block_reduce(s, scratch, Add());
    if (mode == 3) {
      if (threadIdx.x == 0) out[blockIdx.x] = total;
      return;
    }
    const float scale = 1.0f / sqrtf(total / (float)D + eps);
    for (int64_t d = threadIdx.x; d < D; d += kRowThreads) out[(int64_t)blockIdx.x * D + d] = r[d] * scale;
    return;
  }
  float m = -INFINITY;
  for (int64_t d = threadIdx.x; d < D; d += kRowThreads) m = r[d] > m ? r[d] : m;
  m = block_reduce(m, scratch, Max());
  float s = 0;
  for (int64_t d = threadIdx.x; d < D; d += kRowThreads) s += expf(r[d] - m);
  s = block_reduce(s, scratch, Add());
  const float lse = m + logf(s);
  for (int64_t d = threadIdx.x; d < D; d += kRowThreads)
    out[(int64_t)blockIdx.x * D + d] = mode == 1 ? expf(r[d] - m) / s : r[d] - lse;
}

// mode 0: silu, 1: sigmoid.
__global__ void elementwise_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t n, int mode) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float v = x[i];
  out[i] = mode == 0 ? v / (1.0f + expf(-v)) : 1.0f / (1.0f + expf(-v));
}

__global__ void rope_kernel(const int64_t* __restrict__ pos, const float* __restrict__ inv, float* __restrict__ c,
                            float* __restrict__ s, int64_t N, int64_t H) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N * H) return;
  const float angle = (float)pos[i / H] * inv[i % H];
  c[i] = cosf(angle);
  s[i] = sinf(angle);
}

constexpr int kAttnThreads = 128;

// One block per (query, head): scores in shared memory, then softmax and values in key order.
template <typename T>
__global__ void attention_kernel(const float* __restrict__ q, const T* __restrict__ cache, int64_t width,
                                 const int64_t* __restrict__ table, const int64_t* __restrict__ start,
                                 const int64_t* __restrict__ count, int64_t bs, int heads, int group, int64_t key_base,
                                 int64_t key_stride, int64_t dk, int64_t value_base, int64_t value_stride, int64_t dv,
                                 float scale, float* __restrict__ out) {
  extern __shared__ float sm[];
  __shared__ float scratch[kRowThreads];
  const int64_t nh = blockIdx.x, n = nh / heads;
  const int g = (int)(nh % heads) / group;
  const int64_t L = count[n];
  float* qs = sm;           // dk
  float* p = sm + dk;       // L
  for (int64_t i = threadIdx.x; i < dk; i += blockDim.x) qs[i] = q[nh * dk + i];
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  auto row = [&](int64_t j) { return cache + (table[start[n] + j / bs] * bs + j % bs) * width; };
  for (int64_t j = warp; j < L; j += warps) {
    const T* k = row(j) + key_base + g * key_stride;
    float s = 0;
    for (int64_t i = lane; i < dk; i += 32) s += qs[i] * (float)k[i];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) p[j] = s * scale;
  }
  __syncthreads();
  // block_reduce uses 256 slots; only the first blockDim.x take part.
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) m = p[j] > m ? p[j] : m;
  if (threadIdx.x < kRowThreads) scratch[threadIdx.x] = m;
  __syncthreads();
  for (int off = kAttnThreads / 2; off > 0; off >>= 1) {
    if (threadIdx.x < off) scratch[threadIdx.x] = scratch[threadIdx.x] > scratch[threadIdx.x + off] ? scratch[threadIdx.x] : scratch[threadIdx.x + off];
    __syncthreads();
  }
  m = scratch[0];
  __syncthreads();
  float l = 0;
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) l += (p[j] = expf(p[j] - m));
  scratch[threadIdx.x] = l;
  __syncthreads();
  for (int off = kAttnThreads / 2; off > 0; off >>= 1) {
    if (threadIdx.x < off) scratch[threadIdx.x] = scratch[threadIdx.x] + scratch[threadIdx.x + off];
    __syncthreads();
  }
  l = scratch[0];
  for (int64_t d = threadIdx.x; d < dv; d += blockDim.x) {
    float acc = 0;
    for (int64_t j = 0; j < L; ++j) acc += p[j] * (float)row(j)[value_base + g * value_stride + d];
    out[nh * dv + d] = acc / l;
  }
}

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }

void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw Error(std::string("batch-invariant CUDA kernel ") + what + ": " + cudaGetErrorString(e));
}

Tensor gemm(const Tensor& x, const Tensor& w, int64_t M, int64_t N, int64_t K, const Tensor& tiles, int64_t num_tiles) {
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor out = at::empty({M, N}, x.options().dtype(at::kFloat));
  if (M == 0 || N == 0) return out;
  const dim3 grid((unsigned)num_tiles, (unsigned)((N + kBN - 1) / kBN));
  const int64_t* tp = tiles.defined() ? tiles.data_ptr<int64_t>() : nullptr;
  if (w.scalar_type() == at::kBFloat16) {
    Tensor xb = x.to(at::kBFloat16).contiguous(), wb = w.contiguous();
    auto aligned = [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
    const bool vec = K % 8 == 0 && aligned(xb) && aligned(wb);
    gemm_nt_bf16_kernel<<<grid, kWarps * 32, 0, stream()>>>(
        reinterpret_cast<const __nv_bfloat16*>(xb.data_ptr()), reinterpret_cast<const __nv_bfloat16*>(wb.data_ptr()),
        out.data_ptr<float>(), M, N, K, tp, vec);
  } else {
    Tensor xf = x.to(at::kFloat).contiguous(), wf = w.to(at::kFloat).contiguous();
    gemm_nt_f32_kernel<<<grid, kBM * kBN, 0, stream()>>>(xf.data_ptr<float>(), wf.data_ptr<float>(),
                                                          out.data_ptr<float>(), M, N, K, tp);
  }
  check_launch("gemm");
  return out;
}

}  // namespace

Tensor matmul_nt(const Tensor& x, const Tensor& w) {
  const int64_t M = x.size(0), N = w.size(0), K = x.size(1);
  return gemm(x, w, M, N, K, Tensor(), (M + kBM - 1) / kBM);
}

Tensor group_tiles(const std::vector<int64_t>& sizes, at::Device device) {
  std::vector<int64_t> t;
  int64_t offset = 0;
  for (size_t g = 0; g < sizes.size(); ++g) {
    for (int64_t s = 0; s < sizes[g]; s += kBM) t.insert(t.end(), {(int64_t)g, offset + s, std::min<int64_t>(kBM, sizes[g] - s)});
    offset += sizes[g];
  }
  return at::tensor(t, at::TensorOptions().dtype(at::kLong)).to(device);
}

Tensor grouped_matmul_nt(const Tensor& x, const Tensor& w, const Tensor& tiles, int64_t num_tiles) {
  return gemm(x, w, x.size(0), w.size(1), x.size(1), tiles, num_tiles);
}

namespace {
Tensor rows(const Tensor& x, int mode, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor xf = x.to(at::kFloat).contiguous().view({-1, x.size(-1)});
  const int64_t M = xf.size(0), D = xf.size(1);
  Tensor out = mode == 3 ? at::empty({M}, xf.options()) : at::empty_like(xf);
  if (M == 0) return out;
  row_kernel<<<(unsigned)M, kRowThreads, 0, stream()>>>(xf.data_ptr<float>(), out.data_ptr<float>(), D, mode, (float)eps);
  check_launch("row");
  return mode == 3 ? out : out.view(x.sizes());
}

Tensor elementwise(const Tensor& x, int mode) {
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor xf = x.to(at::kFloat).contiguous();
  Tensor out = at::empty_like(xf);
  const int64_t n = xf.numel();
  if (n == 0) return out;
  elementwise_kernel<<<(unsigned)((n + 255) / 256), 256, 0, stream()>>>(xf.data_ptr<float>(), out.data_ptr<float>(), n, mode);
  check_launch("elementwise");
  return out;
}
}  // namespace

Tensor rms_normalize(const Tensor& x, double eps) { return rows(x, 0, eps); }
Tensor softmax(const Tensor& x) { return rows(x, 1, 0); }
Tensor log_softmax(const Tensor& x) { return rows(x, 2, 0); }
Tensor row_sum(const Tensor& x) { return rows(x, 3, 0); }
Tensor silu(const Tensor& x) { return elementwise(x, 0); }
Tensor sigmoid(const Tensor& x) { return elementwise(x, 1); }

std::pair<Tensor, Tensor> rope_cos_sin(const Tensor& positions, const Tensor& inv_freq) {
  const c10::cuda::CUDAGuard guard(positions.device());
  Tensor pos = positions.to(at::kLong).contiguous().view({-1});
  Tensor inv = inv_freq.to(positions.device(), at::kFloat).contiguous();
  const int64_t N = pos.size(0), H = inv.size(0);
  Tensor c = at::empty({N, H}, inv.options()), s = at::empty({N, H}, inv.options());
  if (N * H == 0) return {c, s};
  rope_kernel<<<(unsigned)((N * H + 255) / 256), 256, 0, stream()>>>(pos.data_ptr<int64_t>(), inv.data_ptr<float>(),
                                                                    c.data_ptr<float>(), s.data_ptr<float>(), N, H);
  check_launch("rope");
  return {c, s};
}

Tensor attention(const Tensor& q, const Tensor& cache, const Tensor& table, const Tensor& start, const Tensor& count,
                 int64_t max_keys, int64_t block_size, int64_t kv_heads, int64_t key_base, int64_t key_stride,
                 int64_t key_width, int64_t value_base, int64_t value_stride, int64_t value_width, double scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t N = q.size(0), heads = q.size(1);
  Tensor qf = q.to(at::kFloat).contiguous(), cc = cache.contiguous();
  Tensor out = at::empty({N, heads, value_width}, qf.options());
  if (N == 0) return out;
  const size_t smem = (size_t)(key_width + max_keys) * sizeof(float);
  static const size_t limit = [] {
    int dev = 0, v = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    return (size_t)v - kRowThreads * sizeof(float);
  }();
  if (smem > limit)
    throw Error("batch-invariant attention: " + std::to_string(max_keys) + " keys exceed the block's shared memory");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, cc.scalar_type(), "invariant_attention_cuda", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, at::BFloat16>, __nv_bfloat16,
                                 std::conditional_t<std::is_same_v<scalar_t, at::Half>, __half, scalar_t>>;
    auto kernel = attention_kernel<T>;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)limit);
    kernel<<<(unsigned)(N * heads), kAttnThreads, smem, stream()>>>(
        qf.data_ptr<float>(), reinterpret_cast<const T*>(cc.data_ptr()), cc.size(1), table.data_ptr<int64_t>(),
        start.data_ptr<int64_t>(), count.data_ptr<int64_t>(), block_size, (int)heads, (int)(heads / kv_heads), key_base,
        key_stride, key_width, value_base, value_stride, value_width, (float)scale, out.data_ptr<float>());
  });
  check_launch("attention");
  return out;
}

}  // namespace grpo::model::invariant::cuda
