// Paged MLA decode attention, pass 1 in its pipelined form (model/paged_mla.cuh). One block per
// (key split, row, 16-head tile), four warps, as the first form's pass 1 (paged_mla_cuda.cu), with
// three differences:
//   - queries in registers: warp w holds the query fragments of the 16-column steps w, w + 4,
//     w + 8, ... of the row width, loaded once from global memory, and computes the partial
//     scores of the 16 heads over those columns for every key of the tile: KEYS / 8 independent
//     sums, the queries never read from shared memory again. The softmax adds the four warps'
//     partial scores in a fixed order (w = 0, 1, 2, 3);
//   - `stages` key tiles in shared memory: the tile `stages - 1` ahead is asked for right after the
//     barrier that frees its buffer, so that stages - 1 tiles load while one is used;
//   - three barriers a tile where the first form has four: the one before a tile's scores also
//     tells every warp that the previous tile's buffer is free.
// Softmax and weighted latents as in the first form: the tile's weights rounded to bf16, the sum
// counting the rounded weights; warp w keeps r / 4 output columns in registers.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "model/cuda_launch.h"
#include "model/mma.cuh"
#include "model/paged_mla.cuh"
#include "util/error.h"

namespace grpo::model::cuda::paged_mla {

namespace {

using bf16 = __nv_bfloat16;

// The query's 16-column steps a warp holds at most, for latent rank R and a RoPE part of at most
// 64 columns.
constexpr int steps_per_warp(int R) { return R / 64 + 1; }

// Floats a row of one warp's partial scores takes: conflict-free float2 writes from the fragments.
constexpr int score_stride(int keys) { return keys + 8; }

size_t smem_bytes(int stride, Pipeline p) {
  return (size_t)p.stages * p.keys * stride * sizeof(bf16) +
         (size_t)kWarps * kHeads * score_stride(p.keys) * sizeof(float) + kHeads * (p.keys + kPad) * sizeof(bf16) +
         3 * kHeads * sizeof(float);
}

template <int R, int KEYS, int STAGES>
__global__ void __launch_bounds__(kThreads) paged_mla_pipelined_kernel(const bf16* __restrict__ q,
                                                                       const bf16* __restrict__ cache,
                                                                       const int64_t* __restrict__ table,
                                                                       const int64_t* __restrict__ lens, Shapes s,
                                                                       float* __restrict__ part_o,
                                                                       float* __restrict__ part_ml,
                                                                       bf16* __restrict__ out) {
  constexpr int NT = R / 32;                  // 8-column output tiles per warp
  constexpr int KN = KEYS / 8;                // 8-key score tiles
  constexpr int KW = steps_per_warp(R);
  constexpr int SP = score_stride(KEYS);
  constexpr int PER = KEYS / 8;               // keys per thread in the softmax (eight threads a head)
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Ks = reinterpret_cast<bf16*>(smem);                                // [STAGES][KEYS][stride]
  float* Sp = reinterpret_cast<float*>(Ks + STAGES * KEYS * s.stride);     // [kWarps][kHeads][SP]
  bf16* Ps = reinterpret_cast<bf16*>(Sp + kWarps * kHeads * SP);           // [kHeads][KEYS + kPad]
  float* m_s = reinterpret_cast<float*>(Ps + kHeads * (KEYS + kPad));      // [3][kHeads]
  float* l_s = m_s + kHeads;
  float* alpha_s = l_s + kHeads;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4, mi = lane / 8, ri = lane % 8;
  const int split = blockIdx.x, h0 = blockIdx.z * kHeads;
  const int64_t b = blockIdx.y;
  const int chunks = s.D / 8, steps = s.DP / 16;

  const int64_t len = lens[b];
  const int64_t per = s.balanced ? ((len + s.splits - 1) / s.splits + KEYS - 1) / KEYS * KEYS : s.keys_per_split;
  const int64_t begin = max(s.key_start, (int64_t)split * per), end = min(len, (int64_t)(split + 1) * per);
  const int64_t* row_table = table + b * s.nblk;
  const int bs = (int)s.block_size;

  // The zero tail of every buffer's keys (columns past D), once.
  for (int i = tid; i < STAGES * KEYS * (s.DP / 8 - chunks); i += kThreads) {
    const int row = i / (s.DP / 8 - chunks), c = chunks + i % (s.DP / 8 - chunks);
    *reinterpret_cast<uint4*>(Ks + row * s.stride + 8 * c) = make_uint4(0, 0, 0, 0);
  }
  // Warp w copies keys w * KEYS / 4 .. of a tile, a lane every 32nd piece of a row: one
  // block-table lookup per key.
  auto load_tile = [&](int64_t first, int buf) {
#pragma unroll
    for (int jj = 0; jj < KEYS / kWarps; ++jj) {
      const int j = warp * (KEYS / kWarps) + jj;
      const int p = (int)(first + j);
      const bool valid = p < end;
      const int64_t row = valid ? row_table[p / bs] * s.block_size + p % bs : 0;
      const bf16* src = cache + row * s.D;
      bf16* dst = Ks + (buf * KEYS + j) * s.stride;
      for (int c = lane; c < chunks; c += 32) cp_async16(dst + 8 * c, src + 8 * c, valid);
    }
  };
  const int64_t tiles = end > begin ? (end - begin + KEYS - 1) / KEYS : 0;
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < tiles) load_tile(begin + st * KEYS, st);
    cp_async_commit();
  }

  // This warp's query fragments (A of the score products; zero past the last head and past D),
  // while the first tiles load.
  uint32_t qa[KW][4];
#pragma unroll
  for (int j = 0; j < KW; ++j) {
    const int step = warp + kWarps * j;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int h = h0 + g + 8 * (r & 1), col = step * 16 + 2 * t + 8 * (r >> 1);
      const bool valid = step < steps && h < s.heads && col < s.D;
      qa[j][r] = valid ? load_pair(q + (b * s.heads + h) * s.D + col) : 0u;
    }
  }
  if (tid < kHeads) {
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.0f;
  }
  float o[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

  for (int64_t it = 0; it < tiles; ++it) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // tile it is in; every warp is done with tile it - 1, whose buffer refills now
    {
      const int64_t next = it + STAGES - 1;
      if (next < tiles) load_tile(begin + next * KEYS, (int)(next % STAGES));
      cp_async_commit();
    }
    const bf16* K = Ks + (int)(it % STAGES) * KEYS * s.stride;
    const int64_t first = begin + it * KEYS;

    // Partial scores over this warp's column steps, all keys of the tile. Key fragments by
    // ldmatrix: keys 16 n2 + ri + 8 (mi / 2), columns 8 (mi % 2) of the step, two key tiles a load.
    float c[KN][4];
#pragma unroll
    for (int n = 0; n < KN; ++n) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.0f;
#pragma unroll
    for (int j = 0; j < KW; ++j) {
      const int step = warp + kWarps * j;
      if (step >= steps) break;
      const bf16* kb = K + (ri + 8 * (mi >> 1)) * s.stride + step * 16 + 8 * (mi & 1);
#pragma unroll
      for (int n2 = 0; n2 < KN / 2; ++n2) {
        uint32_t bb[4];
        ldmatrix_x4(bb, kb + n2 * 16 * s.stride);
        const uint32_t b0[2] = {bb[0], bb[1]}, b1[2] = {bb[2], bb[3]};
        mma_bf16(c[2 * n2], qa[j], b0);
        mma_bf16(c[2 * n2 + 1], qa[j], b1);
      }
    }
#pragma unroll
    for (int n = 0; n < KN; ++n) {
      float* row = Sp + (warp * kHeads + g) * SP + n * 8 + 2 * t;
      *reinterpret_cast<float2*>(row) = make_float2(c[n][0], c[n][1]);
      *reinterpret_cast<float2*>(row + 8 * SP) = make_float2(c[n][2], c[n][3]);
    }
    __syncthreads();

    // Online softmax: eight threads per head, PER keys each, the warps' partial scores added in
    // the order of the warps.
    {
      const int row = tid / 8, sub = tid % 8;
      float x[PER], mx = -INFINITY;
#pragma unroll
      for (int i = 0; i < PER; ++i) {
        const int key = sub * PER + i;
        const float* v = Sp + row * SP + key;
        const float score = ((v[0] + v[kHeads * SP]) + v[2 * kHeads * SP]) + v[3 * kHeads * SP];
        x[i] = first + key < end ? score * s.scale_log2 : -INFINITY;
        mx = fmaxf(mx, x[i]);
      }
#pragma unroll
      for (int off = 4; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_old = m_s[row];
      const float m_new = fmaxf(m_old, mx);
      const float alpha = m_new == -INFINITY ? 1.0f : exp2f(m_old - m_new);
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < PER; ++i) {
        const bf16 p = __float2bfloat16(x[i] == -INFINITY ? 0.0f : exp2f(x[i] - m_new));
        Ps[row * (KEYS + kPad) + sub * PER + i] = p;
        sum += __bfloat162float(p);
      }
#pragma unroll
      for (int off = 4; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      __syncwarp();
      if (sub == 0) {
        m_s[row] = m_new;
        l_s[row] = l_s[row] * alpha + sum;
        alpha_s[row] = alpha;
      }
    }
    __syncthreads();

    // Weighted latents: columns warp * R / 4 .. + R / 4.
    const float a_lo = alpha_s[g], a_hi = alpha_s[g + 8];
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      o[n][0] *= a_lo;
      o[n][1] *= a_lo;
      o[n][2] *= a_hi;
      o[n][3] *= a_hi;
    }
#pragma unroll
    for (int ks = 0; ks < KEYS / 16; ++ks) {
      const bf16* P = Ps + ks * 16 + 2 * t;
      const uint32_t a[4] = {load_pair(P + g * (KEYS + kPad)), load_pair(P + (g + 8) * (KEYS + kPad)),
                             load_pair(P + g * (KEYS + kPad) + 8), load_pair(P + (g + 8) * (KEYS + kPad) + 8)};
      // Values by ldmatrix.trans: key ks * 16 + mi % 2 * 8 + ri, columns mi / 2 * 8 on: two
      // 8-column tiles a load.
      const bf16* V = K + (ks * 16 + ri + 8 * (mi & 1)) * s.stride + warp * (R / 4) + 8 * (mi >> 1);
#pragma unroll
      for (int n = 0; n < NT; n += 2) {
        uint32_t bb[4];
        ldmatrix_x4_trans(bb, V + n * 8);
        const uint32_t b0[2] = {bb[0], bb[1]}, b1[2] = {bb[2], bb[3]};
        mma_bf16(o[n], a, b0);
        mma_bf16(o[n + 1], a, b1);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the softmax's last sums (or, with no keys, their first values) for everyone

  if (out) {  // one split: normalised here, as the combine kernel would (the same bits)
    const float l_lo = h0 + g < s.heads ? l_s[g] : 0.0f, l_hi = h0 + g + 8 < s.heads ? l_s[g + 8] : 0.0f;
    const float inv_lo = l_lo > 0.0f ? 1.0f / l_lo : 0.0f, inv_hi = l_hi > 0.0f ? 1.0f / l_hi : 0.0f;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const int col = warp * (R / 4) + n * 8 + 2 * t;
      if (h0 + g < s.heads)
        *reinterpret_cast<__nv_bfloat162*>(out + (b * s.heads + h0 + g) * R + col) =
            __floats2bfloat162_rn(__fmul_rn(o[n][0], inv_lo), __fmul_rn(o[n][1], inv_lo));
      if (h0 + g + 8 < s.heads)
        *reinterpret_cast<__nv_bfloat162*>(out + (b * s.heads + h0 + g + 8) * R + col) =
            __floats2bfloat162_rn(__fmul_rn(o[n][2], inv_hi), __fmul_rn(o[n][3], inv_hi));
    }
    return;
  }
  const int64_t base = (b * s.splits + split) * s.heads;
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const int col = warp * (R / 4) + n * 8 + 2 * t;
    if (h0 + g < s.heads)
      *reinterpret_cast<float2*>(part_o + (base + h0 + g) * R + col) = make_float2(o[n][0], o[n][1]);
    if (h0 + g + 8 < s.heads)
      *reinterpret_cast<float2*>(part_o + (base + h0 + g + 8) * R + col) = make_float2(o[n][2], o[n][3]);
  }
  if (tid < kHeads && h0 + tid < s.heads) {
    part_ml[2 * (base + h0 + tid)] = m_s[tid];
    part_ml[2 * (base + h0 + tid) + 1] = l_s[tid];
  }
}

// The kernel of rank R and pipeline p, null where it is not compiled: every rank with the default
// pipeline, the V2/V3 rank (512) with the others the benchmark compares.
template <int R>
auto kernel_for(Pipeline p) -> decltype(&paged_mla_pipelined_kernel<R, 32, 2>) {
  if (p.keys == 32 && p.stages == 2) return paged_mla_pipelined_kernel<R, 32, 2>;
  if constexpr (R == 512) {
    if (p.keys == 32 && p.stages == 3) return paged_mla_pipelined_kernel<R, 32, 3>;
    if (p.keys == 16 && p.stages == 3) return paged_mla_pipelined_kernel<R, 16, 3>;
    if (p.keys == 16 && p.stages == 4) return paged_mla_pipelined_kernel<R, 16, 4>;
  }
  return nullptr;
}

using Kernel = decltype(&paged_mla_pipelined_kernel<64, 32, 2>);

Kernel kernel_for(int64_t rank, Pipeline p) {
  switch (rank) {
    case 64: return kernel_for<64>(p);
    case 128: return kernel_for<128>(p);
    case 256: return kernel_for<256>(p);
    case 512: return kernel_for<512>(p);
    default: return nullptr;
  }
}

// The kernel, with its opt-in above 48 KB of shared memory made on this device, and the blocks of
// it a multiprocessor holds at once; both once per kernel and device.
struct Prepared {
  Kernel kernel;
  int blocks_per_sm;
};
Prepared prepare(Kernel k, size_t smem, int device) {
  struct Entry {
    Kernel kernel;
    int device;
    int blocks_per_sm;
  };
  static std::mutex mutex;
  static std::vector<Entry> done;
  const std::lock_guard<std::mutex> lock(mutex);
  for (const Entry& e : done)
    if (e.kernel == k && e.device == device) return {k, e.blocks_per_sm};
  cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  int blocks = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, k, kThreads, smem);
  done.push_back({k, device, std::max(blocks, 1)});
  return {k, done.back().blocks_per_sm};
}

}  // namespace

bool pipelined_supported(const Shapes& s, int64_t latent_rank, Pipeline p) {
  return kernel_for(latent_rank, p) != nullptr && s.DP / 16 <= kWarps * steps_per_warp((int)latent_rank) &&
         smem_bytes(s.stride, p) <= 200 * 1024;
}

int pipelined_blocks_per_sm(const Shapes& s, int64_t latent_rank, Pipeline p) {
  int device = 0;
  cudaGetDevice(&device);
  return prepare(kernel_for(latent_rank, p), smem_bytes(s.stride, p), device).blocks_per_sm;
}

void launch_pipelined(const at::Tensor& q, const at::Tensor& cache, const at::Tensor& table, const at::Tensor& lens,
                      const Shapes& s, int64_t latent_rank, Pipeline p, int head_tiles, float* part_o, float* part_ml,
                      void* out) {
  const Kernel k = kernel_for(latent_rank, p);
  if (!k || !pipelined_supported(s, latent_rank, p))
    throw Error("paged MLA decode: no pipelined kernel for rank " + std::to_string(latent_rank) + ", " +
                std::to_string(p.keys) + "-key tiles, " + std::to_string(p.stages) + " stages, row width " +
                std::to_string(s.D));
  const size_t smem = smem_bytes(s.stride, p);
  prepare(k, smem, q.get_device());
  const dim3 grid((unsigned)s.splits, (unsigned)s.rows, (unsigned)head_tiles);
  k<<<grid, kThreads, smem, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const bf16*>(q.data_ptr()), reinterpret_cast<const bf16*>(cache.data_ptr()),
      table.data_ptr<int64_t>(), lens.data_ptr<int64_t>(), s, part_o, part_ml, reinterpret_cast<bf16*>(out));
  cuda_launch::check("paged MLA decode kernel", "pipelined split");
}

}  // namespace grpo::model::cuda::paged_mla
