// CUDA versions of the batch-invariant kernels (model/invariant_kernels.h). Each output element
// is computed by one fixed sequence of operations that depends on the problem's inner sizes alone
// (K, the row length, the keys read), never on the number of rows, the row's position, or the
// tiles around it:
//   - products: bf16 tensor-core steps of 16 values of k (a fixed interleaving within each 32),
//     in increasing k, accumulated in fp32, within eight parts of K whose bounds depend on K
//     alone, the parts then added in order (fp32 weights: lane l of a warp sums k = l, l + 32,
//     ..., then a fixed tree); the tile shapes only decide which outputs a block computes, not how;
//   - row reductions: thread t sums elements t, t + 256, ... in order, then a fixed tree;
//   - attention: one block per (query, head), one score per key (a warp's fixed shuffle tree),
//     softmax and the weighted sum of values in key order (MLA with latent ranks of 64-512 uses
//     the tensor-core paged kernel instead, model/paged_mla_cuda.h, its keys split every 256);
//   - the grouping of rows by expert (invariant_grouping_cuda.cu) is a counting sort on the
//     device: no host synchronisation, so the engine replays the decode step as CUDA graphs.
// Compiled without contraction (--fmad=false), like the CPU file.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "model/cuda_launch.h"
#include "model/dependent_launch.cuh"
#include "model/mma.cuh"
#include "model/row_reduce.cuh"
#include "model/row_vectors.cuh"
#include "model/invariant_gemm_cuda.h"
#include "model/invariant_kernels_cuda.h"
#include "model/kernel_trial.h"
#include "util/error.h"

namespace grpo::model::invariant::cuda {

namespace {

constexpr int kBM = (int)kTileRows;

// Products x W^T, in the order invariant_gemm_cuda.h states (whose wide kernel takes products of
// many rows). A block computes one tile of rows (kBM; of one group when a tile table is given)
// times kTileN columns of W. Its kParts warps each sum a fixed part of K, and the parts are added
// in part order: an output's value depends on K alone, never on M, the tile or the grid.
constexpr int kParts = kProductParts;
constexpr int kTileN = 32;  // bf16: four 8-column tensor-core tiles per warp
// Narrow tiles (adopted, "narrow_columns"): 8 columns a block where the products' blocks would
// not fill the device (a decode step of one or a few rows), their loads kNarrowChunks chunks deep.
constexpr int kNarrowCols = 8, kNarrowChunks = 8;

// Where a block's rows are: (weight offset in groups, first row, rows).
struct Tile {
  int64_t group, row0, rows;
};
__device__ __forceinline__ Tile tile_of(const int64_t* tiles, int64_t M) {
  if (tiles) return {tiles[3 * blockIdx.x], tiles[3 * blockIdx.x + 1], tiles[3 * blockIdx.x + 2]};
  const int64_t row0 = (int64_t)blockIdx.x * kBM;
  return {0, row0, min((int64_t)kBM, M - row0)};
}

// Elements k .. k + 7 of a row (null: a row outside the problem), zero past K. Vec: K % 8 == 0
// and 16-byte aligned rows, so the eight are one load.
template <bool Vec>
__device__ __forceinline__ uint4 eight_at(const __nv_bfloat16* row, int64_t k, int64_t K) {
  if (!row || k >= K) return make_uint4(0, 0, 0, 0);
  if constexpr (Vec) {
    return __ldg(reinterpret_cast<const uint4*>(row + k));
  } else {
    unsigned short v[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = k + i < K ? __bfloat16_as_ushort(row[k + i]) : 0;
    return make_uint4(v[0] | (uint32_t)v[1] << 16, v[2] | (uint32_t)v[3] << 16, v[4] | (uint32_t)v[5] << 16,
                      v[6] | (uint32_t)v[7] << 16);
  }
}

// bf16 tensor-core steps (m16n8k16, fp32 accumulation), two per 32 values of K, in increasing
// order within each part. Lane (g, t) loads values 8t .. 8t + 7 of a 32-value chunk of its rows
// of x and W in one piece and gives them to the two steps as the pairs the fragments expect
// (the first step sums values 8t .. 8t + 3 of every t, the second 8t + 4 .. 8t + 7): the same
// sum, with loads four times wider than the fragments' own layout. Operands come straight from
// global memory (the weights are read once per tile, and a decode step has one or a few tiles).
// R: row tiles per block (a table's tiles of up to R * 16 rows): each weight load serves R tiles.
template <bool Vec, int R, int TN>
__global__ void __launch_bounds__(kParts * 32) gemm_nt_bf16_kernel(const __nv_bfloat16* __restrict__ x,
                                                                    const __nv_bfloat16* __restrict__ w,
                                                                    void* __restrict__ out, bool bf16_out, int64_t M,
                                                                    int64_t N, int64_t K, int64_t part_len,
                                                                    const int64_t* __restrict__ tiles) {
  extern __shared__ float partial[];  // [kParts][R * kBM][TN + 1]
  Tile tile = tile_of(tiles, M);
  if (R > 1 && !tiles) {
    tile.row0 = (int64_t)blockIdx.x * R * kBM;
    tile.rows = min((int64_t)R * kBM, M - tile.row0);
  }
  if (tile.rows == 0) return;  // an unused slot of a table sized for the worst case
  const __nv_bfloat16* wp = w + tile.group * N * K;
  const int64_t col0 = (int64_t)blockIdx.y * TN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const __nv_bfloat16 *xr0[R], *xr1[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    xr0[r] = r * kBM + g < tile.rows ? x + (tile.row0 + r * kBM + g) * K : nullptr;
    xr1[r] = r * kBM + g + 8 < tile.rows ? x + (tile.row0 + r * kBM + g + 8) * K : nullptr;
  }
  const __nv_bfloat16* wr[TN / 8];
#pragma unroll
  for (int j = 0; j < TN / 8; ++j) {
    const int64_t n = col0 + 8 * j + g;
    wr[j] = n < N ? wp + n * K : nullptr;
  }
  float c[R][TN / 8][4] = {};
  const int64_t begin = warp * part_len, end = min(K, begin + part_len);
  if constexpr (TN == kTileN) {
#pragma unroll 2
    for (int64_t k0 = begin; k0 < end; k0 += 32) {
      const int64_t k = k0 + 8 * t;
      uint4 b[TN / 8];
#pragma unroll
      for (int j = 0; j < TN / 8; ++j) b[j] = eight_at<Vec>(wr[j], k, K);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const uint4 a_lo = eight_at<Vec>(xr0[r], k, K), a_hi = eight_at<Vec>(xr1[r], k, K);
#pragma unroll
        for (int j = 0; j < TN / 8; ++j) {
          mma_bf16(c[r][j], a_lo.x, a_hi.x, a_lo.y, a_hi.y, b[j].x, b[j].y);
          mma_bf16(c[r][j], a_lo.z, a_hi.z, a_lo.w, a_hi.w, b[j].z, b[j].w);
        }
      }
    }
  } else {
    // Narrow tiles (one 8-column tensor-core tile, one row tile): the loads of kNarrowChunks chunks
    // are issued together before their steps, so that a part's few chunks wait on memory about once.
    // The steps are the same, in the same order; chunks past the part's end are neither loaded nor
    // added.
    static_assert(R == 1 && TN == 8, "narrow tiles: one row tile of 16, one 8-column tile");
    for (int64_t k0 = begin; k0 < end; k0 += 32 * kNarrowChunks) {
      uint4 b[kNarrowChunks], a_lo[kNarrowChunks], a_hi[kNarrowChunks];
#pragma unroll
      for (int u = 0; u < kNarrowChunks; ++u) {
        const int64_t k = k0 + 32 * u + 8 * t;
        const bool in_part = k0 + 32 * u < end;
        b[u] = eight_at<Vec>(in_part ? wr[0] : nullptr, k, K);
        a_lo[u] = eight_at<Vec>(in_part ? xr0[0] : nullptr, k, K);
        a_hi[u] = eight_at<Vec>(in_part ? xr1[0] : nullptr, k, K);
      }
#pragma unroll
      for (int u = 0; u < kNarrowChunks; ++u) {
        if (k0 + 32 * u >= end) break;
        mma_bf16(c[0][0], a_lo[u].x, a_hi[u].x, a_lo[u].y, a_hi[u].y, b[u].x, b[u].y);
        mma_bf16(c[0][0], a_lo[u].z, a_hi[u].z, a_lo[u].w, a_hi[u].w, b[u].z, b[u].w);
      }
    }
  }
  constexpr int kRows = R * kBM, kStride = TN + 1;
  float* mine = partial + warp * kRows * kStride;
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int j = 0; j < TN / 8; ++j) {
      const int lo = r * kBM + g, hi = lo + 8, col = 8 * j + 2 * t;
      mine[lo * kStride + col] = c[r][j][0];
      mine[lo * kStride + col + 1] = c[r][j][1];
      mine[hi * kStride + col] = c[r][j][2];
      mine[hi * kStride + col + 1] = c[r][j][3];
    }
  __syncthreads();
  for (int i = threadIdx.x; i < kRows * TN; i += blockDim.x) {
    const int r = i / TN, cc = i % TN;
    const int64_t n = col0 + cc;
    if (r >= tile.rows || n >= N) continue;
    float sum = partial[r * kStride + cc];
#pragma unroll
    for (int p = 1; p < kParts; ++p) sum += partial[(p * kRows + r) * kStride + cc];
    if (bf16_out)
      static_cast<__nv_bfloat16*>(out)[(tile.row0 + r) * N + n] = __float2bfloat16_rn(sum);
    else
      static_cast<float*>(out)[(tile.row0 + r) * N + n] = sum;
  }
}

template <bool Vec, int R, int TN = kTileN>
void launch_bf16(const __nv_bfloat16* x, const __nv_bfloat16* w, void* out, bool bf16_out, int64_t M, int64_t N,
                 int64_t K, const int64_t* tiles, int64_t blocks, at::Device device, cudaStream_t stream) {
  const size_t smem = (size_t)kParts * R * kBM * (TN + 1) * sizeof(float);
  if (smem > 48 * 1024) {
    static std::array<std::atomic<bool>, 64> configured{};  // the opt-in above 48 KB, once per device (not in a graph)
    if (device.index() >= (int)configured.size() || !configured[device.index()].exchange(true))
      cudaFuncSetAttribute(gemm_nt_bf16_kernel<Vec, R, TN>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  }
  const dim3 grid((unsigned)blocks, (unsigned)((N + TN - 1) / TN));
  gemm_nt_bf16_kernel<Vec, R, TN><<<grid, kParts * 32, smem, stream>>>(x, w, out, bf16_out, M, N, K,
                                                                       product_part_length(K), tiles);
}

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

// RMSNorm with its weight, one block per row: the sum of squares as row_kernel's mode 0, then
// weight * (x * scale rounded to T), rounded to T.
template <typename T>
__global__ void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out, int64_t D,
                                float eps) {
  __shared__ float scratch[kRowThreads];
  rms_norm_row<T>(x + (int64_t)blockIdx.x * D, w, out + (int64_t)blockIdx.x * D, D, eps, scratch);
}

// (silu(gate) rounded to T) * up, rounded to T.
template <typename T>
__device__ __forceinline__ T swiglu_value(float v, float u) {
  return (T)((float)(T)(v / (1.0f + expf(-v))) * u);
}

// SwiGLU over gate and up rows of I values at row strides sg, su: an element a thread.
template <typename T>
__global__ void swiglu_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out, int64_t M,
                              int64_t I, int64_t sg, int64_t su) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= M * I) return;
  const int64_t m = i / I, c = i % I;
  out[i] = swiglu_value<T>((float)gate[m * sg + c], (float)up[m * su + c]);
}

// The same in 16-byte packs (row_vectors.cuh), where rows_in_packs holds: a pack a thread.
template <typename T>
__global__ void swiglu_packed_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out,
                                     int64_t M, int64_t I, int64_t sg, int64_t su) {
  dependent_launch::let_dependents_start();  // the down projection after it may load its weights
  const PackAt p = pack_at<T>(M, I);
  if (!p.valid) return;
  const Pack<T> g = load_pack(gate + p.row * sg + p.col), u = load_pack(up + p.row * su + p.col);
  Pack<T> o;
#pragma unroll
  for (int e = 0; e < Pack<T>::kSize; ++e) o.v[e] = swiglu_value<T>((float)g.v[e], (float)u.v[e]);
  store_pack(out + p.row * I + p.col, o);
}

// combine_experts: each grouped row's output times its weight, rounded, put in its pair's place;
// then each token's k parts added in order.
template <typename T>
__global__ void weigh_pairs_kernel(const T* __restrict__ y, const int64_t* __restrict__ order,
                                   const float* __restrict__ weights, T* __restrict__ parts, int64_t rows, int64_t H) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= rows * H) return;
  const int64_t r = i / H, h = i % H, pair = order[r];
  parts[pair * H + h] = (T)((float)y[i] * weights[pair]);
}

template <typename T>
__global__ void sum_parts_kernel(const T* __restrict__ parts, T* __restrict__ out, int64_t N, int64_t k, int64_t H) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N * H) return;
  const int64_t n = i / H, h = i % H;
  T acc = parts[n * k * H + h];
  for (int64_t j = 1; j < k; ++j) acc = (T)((float)acc + (float)parts[(n * k + j) * H + h]);
  out[i] = acc;
}

using cuda_launch::stream;
void check_launch(const char* what) { cuda_launch::check("batch-invariant CUDA kernel", what); }

// Narrow tiles where the 32-column blocks of one row tile each would not give every
// multiprocessor two blocks, unless turned off ("-narrow_columns").
bool use_narrow_columns(int64_t row_blocks, int64_t N) {
  if (row_blocks * ((N + kTileN - 1) / kTileN) >= 2 * at::cuda::getCurrentDeviceProperties()->multiProcessorCount)
    return false;
  return kernel_adopted("narrow_columns");
}

// tiles: the table of grouped rows (tiles of up to tile_rows rows: 16, 32 or 64), or undefined;
// wide_tiles: their kWideRows-row table, or undefined; for a plain product (no tiles), `wide` says
// whether to take the wide kernel.
Tensor gemm(const Tensor& x, const Tensor& w, int64_t M, int64_t N, int64_t K, const Tensor& tiles, int64_t num_tiles,
            int64_t tile_rows, const Tensor& wide_tiles, int64_t num_wide_tiles, bool wide,
            std::optional<at::ScalarType> round_to) {
  const c10::cuda::CUDAGuard guard(x.device());
  const bool bf16 = w.scalar_type() == at::kBFloat16;
  const bool bf16_out = bf16 && round_to == at::kBFloat16;  // rounded by the product itself
  Tensor out = at::empty({M, N}, x.options().dtype(bf16_out ? at::kBFloat16 : at::kFloat));
  if (M == 0 || N == 0 || num_tiles == 0) return out;
  const int64_t* tp = tiles.defined() ? tiles.data_ptr<int64_t>() : nullptr;
  if (bf16) {
    Tensor xb = x.to(at::kBFloat16).contiguous(), wb = w.contiguous();
    auto aligned = [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
    auto* xp = reinterpret_cast<const __nv_bfloat16*>(xb.data_ptr());
    auto* wp = reinterpret_cast<const __nv_bfloat16*>(wb.data_ptr());
    // The same arithmetic whichever form: only the loads, and which outputs a block computes, differ.
    const bool vec = K % 8 == 0 && aligned(xb) && aligned(wb);
    // Row tiles a block: the table's tiles' (of 16, 32 or 64 rows), or four for a plain product
    // of more than 32 rows.
    const int64_t per_block = tp ? tile_rows / kBM : M > 2 * kBM ? 4 : 1;
    const int64_t blocks = tp ? num_tiles : (M + per_block * kBM - 1) / (per_block * kBM);
    void* op = out.data_ptr();
    auto launch = [&](auto vec_form) {
      constexpr bool V = decltype(vec_form)::value;
      if (per_block == 1 && use_narrow_columns(blocks, N))
        launch_bf16<V, 1, kNarrowCols>(xp, wp, op, bf16_out, M, N, K, tp, blocks, x.device(), stream());
      else if (per_block == 4) launch_bf16<V, 4>(xp, wp, op, bf16_out, M, N, K, tp, blocks, x.device(), stream());
      else if (per_block == 2) launch_bf16<V, 2>(xp, wp, op, bf16_out, M, N, K, tp, blocks, x.device(), stream());
      else launch_bf16<V, 1>(xp, wp, op, bf16_out, M, N, K, tp, blocks, x.device(), stream());
    };
    if (vec && tp && wide_tiles.defined())
      wide_gemm_bf16(xp, wp, op, bf16_out, M, N, K, wide_tiles.data_ptr<int64_t>(), num_wide_tiles, x.device(), stream());
    else if (vec && !tp && wide) wide_gemm_bf16(xp, wp, op, bf16_out, M, N, K, nullptr, 0, x.device(), stream());
    else if (vec && tp && use_staged_tiles())
      wide_gemm_bf16(xp, wp, op, bf16_out, M, N, K, tp, num_tiles, x.device(), stream(), tile_rows);
    else if (vec) launch(std::true_type());
    else launch(std::false_type());
  } else {
    gemm_f32(x, w, out, M, N, K, tp, num_tiles, tp ? tile_rows : kBM, kernel_adopted("fp32_products"));
  }
  check_launch("gemm");
  return round_to && !bf16_out ? out.to(*round_to) : out;
}

}  // namespace

Tensor matmul_nt(const Tensor& x, const Tensor& w, std::optional<at::ScalarType> round_to) {
  const int64_t M = x.size(0), N = w.size(0), K = x.size(1);
  return gemm(x, w, M, N, K, Tensor(), (M + kBM - 1) / kBM, kBM, Tensor(), 0, use_wide_products(M, 1), round_to);
}

Tensor grouped_matmul_nt(const Tensor& x, const Tensor& w, const Tensor& tiles, int64_t num_tiles, int64_t tile_rows,
                         const Tensor& wide_tiles, int64_t num_wide_tiles, std::optional<at::ScalarType> round_to) {
  if (tile_rows != kBM && tile_rows != 2 * kBM && tile_rows != 4 * kBM)
    throw Error("invariant grouped_matmul_nt: tiles of " + std::to_string(tile_rows) + " rows (16, 32 or 64)");
  return gemm(x, w, x.size(0), w.size(1), x.size(1), tiles, num_tiles, tile_rows, wide_tiles, num_wide_tiles, false,
              round_to);
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

using cuda_launch::device_t;

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor xc = x.contiguous(), wc = weight.contiguous();
  const int64_t D = x.size(-1), M = D == 0 ? 0 : xc.numel() / D;
  Tensor out = at::empty(xc.sizes(), xc.options());
  if (M == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "invariant_rms_norm_cuda", [&] {
    using T = device_t<scalar_t>;
    rms_norm_kernel<T><<<(unsigned)M, kRowThreads, 0, stream()>>>(reinterpret_cast<const T*>(xc.data_ptr()),
                                                                  reinterpret_cast<const T*>(wc.data_ptr()),
                                                                  reinterpret_cast<T*>(out.data_ptr()), D, (float)eps);
  });
  check_launch("rms_norm");
  return out;
}

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  const c10::cuda::CUDAGuard guard(gate.device());
  const int64_t I = gate.size(-1);
  Tensor g2 = gate.reshape({-1, I}), u2 = up.reshape({-1, I});
  if (g2.stride(1) != 1) g2 = g2.contiguous();
  if (u2.stride(1) != 1) u2 = u2.contiguous();
  const int64_t M = g2.size(0);
  Tensor out = at::empty({M, I}, g2.options());
  if (M * I == 0) return out.view(gate.sizes());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g2.scalar_type(), "invariant_swiglu_cuda", [&] {
    using T = device_t<scalar_t>;
    const auto* g = reinterpret_cast<const T*>(g2.data_ptr());
    const auto* u = reinterpret_cast<const T*>(u2.data_ptr());
    auto* o = reinterpret_cast<T*>(out.data_ptr());
    const int64_t sg = g2.stride(0), su = u2.stride(0);
    if (kernel_adopted("packed_swiglu") && rows_in_packs(M, I, sizeof(T), {{g, sg}, {u, su}, {o, I}}))
      swiglu_packed_kernel<T><<<pack_blocks<T>(M, I), kPackThreads, 0, stream()>>>(g, u, o, M, I, sg, su);
    else
      swiglu_kernel<T><<<(unsigned)((M * I + 255) / 256), 256, 0, stream()>>>(g, u, o, M, I, sg, su);
  });
  check_launch("swiglu");
  return out.view(gate.sizes());
}

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
    using T = device_t<scalar_t>;
    auto kernel = attention_kernel<T>;
    static std::array<std::atomic<bool>, 64> configured{};  // the opt-in above 48 KB, once per device (not in a graph)
    const int device = q.get_device();
    if (device >= (int)configured.size() || !configured[device].exchange(true))
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)limit);
    kernel<<<(unsigned)(N * heads), kAttnThreads, smem, stream()>>>(
        qf.data_ptr<float>(), reinterpret_cast<const T*>(cc.data_ptr()), cc.size(1), table.data_ptr<int64_t>(),
        start.data_ptr<int64_t>(), count.data_ptr<int64_t>(), block_size, (int)heads, (int)(heads / kv_heads), key_base,
        key_stride, key_width, value_base, value_stride, value_width, (float)scale, out.data_ptr<float>());
  });
  check_launch("attention");
  return out;
}

Tensor combine_experts(const Tensor& y, const Tensor& order, const Tensor& weights, int64_t k) {
  const c10::cuda::CUDAGuard guard(y.device());
  Tensor yc = y.contiguous(), oc = order.to(at::kLong).contiguous(), wc = weights.to(at::kFloat).contiguous();
  const int64_t rows = yc.size(0), H = yc.size(1), N = rows / k;
  Tensor parts = at::empty_like(yc), out = at::empty({N, H}, yc.options());
  if (rows * H == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, yc.scalar_type(), "invariant_combine_experts_cuda", [&] {
    using T = device_t<scalar_t>;
    weigh_pairs_kernel<T><<<(unsigned)((rows * H + 255) / 256), 256, 0, stream()>>>(
        reinterpret_cast<const T*>(yc.data_ptr()), oc.data_ptr<int64_t>(), wc.data_ptr<float>(),
        reinterpret_cast<T*>(parts.data_ptr()), rows, H);
    sum_parts_kernel<T><<<(unsigned)((N * H + 255) / 256), 256, 0, stream()>>>(
        reinterpret_cast<const T*>(parts.data_ptr()), reinterpret_cast<T*>(out.data_ptr()), N, k, H);
  });
  check_launch("combine_experts");
  return out;
}

}  // namespace grpo::model::invariant::cuda
