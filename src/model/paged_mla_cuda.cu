// Paged MLA decode attention (model/paged_mla_cuda.h).
//
// Pass 1, one block per (key split, row, 16-head tile), four warps (or per four rows of one
// sequence, four warps each, sharing the key tiles: the batch-invariant form's query tiles):
//   - the 16 queries sit in shared memory; key tiles of 32 rows are copied in with cp.async, two
//     buffers, so the next tile loads while this one is used;
//   - scores: warp w computes the 16 x 8 scores of keys 8w..8w+7 over the whole row width
//     (mma.m16n8k16, bf16 in, fp32 accumulate; fragments by ldmatrix, two independent sums over
//     alternate 16-column steps so that the products need not wait on each other);
//   - softmax: running maximum and sum per head in fp32 (base-2 exponentials with the scale
//     folded in); the tile's weights are rounded to bf16 for the next product, and the sum counts
//     the rounded weights, so that the weights used are the weights normalised;
//   - weighted latent: warp w keeps r / 4 output columns in registers, rescaled when a head's
//     maximum grows, and adds weights (16 x 32) times the tile's latents (32 x r / 4), the
//     latents' fragments read transposed by ldmatrix.
//   It writes the unnormalised output, the maximum and the sum of its split.
// (Pass 1 of the decode step has a second, pipelined form: paged_mla_pipelined_cuda.cu.)
// Pass 2, one block per (row, head, 128 output columns): combines the splits. With one split pass 1
// writes the output itself, as pass 2 would (the same bits), and pass 2 does not run.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>

#include "model/cuda_launch.h"
#include "model/kernel_trial.h"
#include "model/mma.cuh"
#include "model/paged_mla.cuh"
#include "model/paged_mla_cuda.h"
#include "util/error.h"

namespace grpo::model::cuda {

namespace {

using bf16 = __nv_bfloat16;

using paged_mla::kHeads;
using paged_mla::kPad;
using paged_mla::kThreads;
using paged_mla::kWarps;
using paged_mla::Shapes;
constexpr int kKeys = 32;  // keys per tile: eight per warp
constexpr int kMaxSplits = 256;
constexpr int64_t kInvariantSplitKeys = 256;  // keys per split of the batch-invariant form
constexpr int kRunQueries = 4;  // query rows a block for runs of one sequence's tokens

// Q: the query rows a block serves (pass 1 below).
__host__ __device__ inline size_t smem_bytes(int stride, int Q = 1) {
  return (size_t)(Q * kHeads + 2 * kKeys) * stride * sizeof(bf16) +
         Q * ((size_t)kHeads * kKeys * sizeof(float) + kHeads * (kKeys + kPad) * sizeof(bf16) + 3 * kHeads * sizeof(float));
}

// Q query rows a block: 1, or 4 for runs of one sequence's tokens (a prefill, a training forward
// in the batch-invariant form), whose keys are then read once for the four. Each row has its own
// four warps, queries, scores and running softmax, and computes exactly what a block of its own
// would (the same tiles of keys from the same split start; keys past its own end weigh 0); the
// key tiles are loaded once for the rows of a pass. Rows of the group that read different block
// tables (another sequence) take a pass of their own.
template <int R, int Q>
__global__ void __launch_bounds__(kThreads * Q) paged_mla_split_kernel(const bf16* __restrict__ q,
                                                                       const bf16* __restrict__ cache,
                                                                       const int64_t* __restrict__ table,
                                                                       const int64_t* __restrict__ lens,
                                                                       const int64_t* __restrict__ starts, Shapes s,
                                                                       float* __restrict__ part_o,
                                                                       float* __restrict__ part_ml,
                                                                       bf16* __restrict__ out) {
  constexpr int NT = R / 32;  // 8-column tiles per warp
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x, slot = tid / kThreads, ltid = tid % kThreads, warp = ltid / 32, lane = tid % 32;
  bf16* Qs = reinterpret_cast<bf16*>(smem) + slot * kHeads * s.stride;        // [Q][kHeads][stride]: this row's
  bf16* Ks = reinterpret_cast<bf16*>(smem) + Q * kHeads * s.stride;           // [2][kKeys][stride]
  float* Ss = reinterpret_cast<float*>(Ks + 2 * kKeys * s.stride);            // [Q][kHeads][kKeys]
  bf16* Ps = reinterpret_cast<bf16*>(Ss + Q * kHeads * kKeys);                // [Q][kHeads][kKeys + kPad]
  float* m_s = reinterpret_cast<float*>(Ps + Q * kHeads * (kKeys + kPad)) + slot * 3 * kHeads;  // [Q][3][kHeads]
  Ss += slot * kHeads * kKeys;
  Ps += slot * kHeads * (kKeys + kPad);
  float* l_s = m_s + kHeads;
  float* alpha_s = l_s + kHeads;

  const int split = blockIdx.x, h0 = blockIdx.z * kHeads;
  const int g = lane / 4, t = lane % 4, mi = lane / 8, ri = lane % 8;
  const int64_t row0 = (int64_t)blockIdx.y * Q, b = row0 + slot;
  const int chunks = s.D / 8;  // 16-byte pieces of a cache row

  // The zero tail of the keys (columns past D), once.
  for (int i = tid; i < 2 * kKeys * (s.DP / 8 - chunks); i += kThreads * Q) {
    const int row = i / (s.DP / 8 - chunks), c = chunks + i % (s.DP / 8 - chunks);
    *reinterpret_cast<uint4*>(Ks + row * s.stride + 8 * c) = make_uint4(0, 0, 0, 0);
  }
  const int bs = (int)s.block_size;
  // One pass: the rows of the group that read the block table from lead_start on (`mine`: this
  // slot's row is one), keys [begin, end) of the split for all of them, [begin, my_end) for this
  // slot's row.
  auto pass = [&](int64_t lead_start, int64_t begin, int64_t end, int64_t my_end, bool mine) {
    const int64_t* row_table = table + lead_start;

    // This row's queries (zero rows past the last head, zero columns past D; zeros for a slot
    // outside the pass), and its running softmax.
    for (int i = ltid; i < kHeads * (s.DP / 8); i += kThreads) {
      const int h = i / (s.DP / 8), c = i % (s.DP / 8);
      const bool valid = mine && h0 + h < s.heads && c < chunks;
      cp_async16(Qs + h * s.stride + 8 * c, valid ? q + ((b * s.heads + h0 + h) * s.D + 8 * c) : q, valid);
    }
    if (ltid < kHeads) {
      m_s[ltid] = -INFINITY;
      l_s[ltid] = 0.0f;
    }
    // Warp w of the block copies keys (8 / Q) w .. of the tile, a lane every 32nd piece of a row:
    // one block-table lookup per key (32-bit arithmetic), none per piece.
    auto load_tile = [&](int64_t first, int buf) {
#pragma unroll
      for (int jj = 0; jj < kKeys / (kWarps * Q); ++jj) {
        const int j = (tid / 32) * (kKeys / (kWarps * Q)) + jj;
        const int p = (int)(first + j);
        const bool valid = p < end;
        const int64_t row = valid ? row_table[p / bs] * s.block_size + p % bs : 0;
        const bf16* src = cache + row * s.D;
        bf16* dst = Ks + (buf * kKeys + j) * s.stride;
        for (int c = lane; c < chunks; c += 32) cp_async16(dst + 8 * c, src + 8 * c, valid);
      }
    };

    float o[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

    const int64_t tiles = end > begin ? (end - begin + kKeys - 1) / kKeys : 0;
    if (tiles > 0) load_tile(begin, 0);
    cp_async_commit();
    for (int64_t it = 0; it < tiles; ++it) {
      const int buf = (int)(it & 1);
      const int64_t first = begin + it * kKeys;
      if (it + 1 < tiles) load_tile(first + kKeys, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();
      const bf16* K = Ks + buf * kKeys * s.stride;

      // Scores of keys 8 * warp .. + 7 for the 16 heads: fragments by ldmatrix (queries: rows
      // mi % 2 * 8 + ri, columns mi / 2 * 8 of a 16 x 16 block; keys: key ri, columns mi * 8 of
      // a 32-column block, two steps' worth), two independent sums over alternate 16-column steps.
      float c[4] = {0.0f, 0.0f, 0.0f, 0.0f}, c2[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      {
        const bf16* qa = Qs + (ri + 8 * (mi & 1)) * s.stride + 8 * (mi >> 1);
        const bf16* kb = K + (warp * 8 + ri) * s.stride + 8 * mi;
        int k0 = 0;
        for (; k0 + 32 <= s.DP; k0 += 32) {
          uint32_t a[4], a2[4], bb[4];
          ldmatrix_x4(a, qa + k0);
          ldmatrix_x4(a2, qa + k0 + 16);
          ldmatrix_x4(bb, kb + k0);
          const uint32_t b0[2] = {bb[0], bb[1]}, b1[2] = {bb[2], bb[3]};
          mma_bf16(c, a, b0);
          mma_bf16(c2, a2, b1);
        }
        if (k0 < s.DP) {  // the last 16 columns
          uint32_t a[4], bb[2];
          ldmatrix_x4(a, qa + k0);
          ldmatrix_x2(bb, kb + k0);
          mma_bf16(c, a, bb);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) c[i] += c2[i];
      }
      {
        const int key = warp * 8 + 2 * t;
        const bool v0 = first + key < my_end, v1 = first + key + 1 < my_end;
        Ss[g * kKeys + key] = v0 ? c[0] * s.scale_log2 : -INFINITY;
        Ss[g * kKeys + key + 1] = v1 ? c[1] * s.scale_log2 : -INFINITY;
        Ss[(g + 8) * kKeys + key] = v0 ? c[2] * s.scale_log2 : -INFINITY;
        Ss[(g + 8) * kKeys + key + 1] = v1 ? c[3] * s.scale_log2 : -INFINITY;
      }
      __syncthreads();

      // Online softmax: eight threads per head, four keys each.
      {
        const int row = ltid / 8, sub = ltid % 8;
        float x[4], mx = -INFINITY;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          x[i] = Ss[row * kKeys + sub * 4 + i];
          mx = fmaxf(mx, x[i]);
        }
#pragma unroll
        for (int off = 4; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        const float m_old = m_s[row];
        const float m_new = fmaxf(m_old, mx);
        const float alpha = m_new == -INFINITY ? 1.0f : exp2f(m_old - m_new);
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const bf16 p = __float2bfloat16(x[i] == -INFINITY ? 0.0f : exp2f(x[i] - m_new));
          Ps[row * (kKeys + kPad) + sub * 4 + i] = p;
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
      for (int ks = 0; ks < kKeys / 16; ++ks) {
        const bf16* P = Ps + ks * 16 + 2 * t;
        const uint32_t a[4] = {load_pair(P + g * (kKeys + kPad)), load_pair(P + (g + 8) * (kKeys + kPad)),
                               load_pair(P + g * (kKeys + kPad) + 8), load_pair(P + (g + 8) * (kKeys + kPad) + 8)};
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
      __syncthreads();  // the buffer is refilled by the next iteration's load
    }
    cp_async_wait<0>();

    if (mine && out) {
      // One split: pass 2's result written here, computed as it computes it (its weight of the
      // one split is exactly 1, its sums add exact zeros), so the bits are the same.
      const float l_lo = h0 + g < s.heads ? l_s[g] : 0.0f, l_hi = h0 + g + 8 < s.heads ? l_s[g + 8] : 0.0f;
      const float inv_lo = l_lo > 0.0f ? 1.0f / l_lo : 0.0f, inv_hi = l_hi > 0.0f ? 1.0f / l_hi : 0.0f;
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const int col = warp * (R / 4) + n * 8 + 2 * t;
        if (h0 + g < s.heads) {
          bf16* dst = out + (b * s.heads + h0 + g) * R + col;
          dst[0] = __float2bfloat16(__fmul_rn(o[n][0], inv_lo));
          dst[1] = __float2bfloat16(__fmul_rn(o[n][1], inv_lo));
        }
        if (h0 + g + 8 < s.heads) {
          bf16* dst = out + (b * s.heads + h0 + g + 8) * R + col;
          dst[0] = __float2bfloat16(__fmul_rn(o[n][2], inv_hi));
          dst[1] = __float2bfloat16(__fmul_rn(o[n][3], inv_hi));
        }
      }
    } else if (mine) {
      const int64_t base = (b * s.splits + split) * s.heads;
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const int col = warp * (R / 4) + n * 8 + 2 * t;
        if (h0 + g < s.heads) {
          float* dst = part_o + (base + h0 + g) * R + col;
          dst[0] = o[n][0];
          dst[1] = o[n][1];
        }
        if (h0 + g + 8 < s.heads) {
          float* dst = part_o + (base + h0 + g + 8) * R + col;
          dst[0] = o[n][2];
          dst[1] = o[n][3];
        }
      }
      if (ltid < kHeads && h0 + ltid < s.heads) {
        part_ml[2 * (base + h0 + ltid)] = m_s[ltid];
        part_ml[2 * (base + h0 + ltid) + 1] = l_s[ltid];
      }
    }
  };

  if constexpr (Q == 1) {  // a block of its own: the row's keys alone
    const int64_t len = lens[b];
    const int64_t per = s.balanced ? ((len + s.splits - 1) / s.splits + kKeys - 1) / kKeys * kKeys : s.keys_per_split;
    const int64_t end = min(len, (int64_t)(split + 1) * per);
    pass(starts ? starts[b] : b * s.nblk, max(s.key_start, (int64_t)split * per), end, end, true);
    return;
  }
  unsigned done = 0;  // the rows served by earlier passes
  for (;;) {
    // This pass: the first row not yet served, and the group's rows that read its block table.
    int lead = -1;
#pragma unroll
    for (int j = 0; j < Q; ++j)
      if (lead < 0 && !(done >> j & 1) && row0 + j < s.rows) lead = j;
    if (lead < 0) break;
    const int64_t lead_start = starts ? starts[row0 + lead] : (row0 + lead) * s.nblk;
    const int64_t per = s.keys_per_split;  // (the host gives runs fixed splits, never balanced ones)
    const int64_t begin = max(s.key_start, (int64_t)split * per);
    int64_t end = 0, my_end = 0;  // the pass's last key + 1, and this slot's row's
    unsigned active = 0;
#pragma unroll
    for (int j = 0; j < Q; ++j) {
      const int64_t r = row0 + j;
      if ((done >> j & 1) || r >= s.rows || (starts ? starts[r] : r * s.nblk) != lead_start) continue;
      active |= 1u << j;
      const int64_t e = min(lens[r], (int64_t)(split + 1) * per);
      end = max(end, e);
      if (j == slot) my_end = e;
    }
    done |= active;
    pass(lead_start, begin, end, my_end, active >> slot & 1);
    __syncthreads();  // the next pass refills the queries and resets the softmax
  }
}

// Max (max = true) or sum over the block's threads, returned to all of them.
__device__ float block_reduce(float v, bool max, float* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = max ? fmaxf(v, o) : v + o;
  }
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < kWarps; ++w) v = max ? fmaxf(v, scratch[w]) : v + scratch[w];
  __syncthreads();
  return v;
}

// out[b, h, :] = sum over splits of o * 2^(m - M) / sum of l * 2^(m - M). The splits' weights
// are computed once, in parallel, so that the column loop's loads are independent.
__global__ void __launch_bounds__(kThreads) paged_mla_combine_kernel(const float* __restrict__ part_o,
                                                                     const float* __restrict__ part_ml,
                                                                     bf16* __restrict__ out, int heads, int splits,
                                                                     int R) {
  __shared__ float w[kMaxSplits];
  __shared__ float scratch[kWarps];
  const int64_t b = blockIdx.x / heads, h = blockIdx.x % heads;
  const float* ml = part_ml + 2 * (b * splits * heads + h);  // split sp at ml[2 * sp * heads]
  float m = -INFINITY;
  for (int sp = threadIdx.x; sp < splits; sp += kThreads) m = fmaxf(m, ml[2 * sp * heads]);
  const float M = block_reduce(m, true, scratch);
  float l = 0.0f;
  for (int sp = threadIdx.x; sp < splits; sp += kThreads) {
    const float m_sp = ml[2 * sp * heads];
    const float e = m_sp == -INFINITY ? 0.0f : exp2f(m_sp - M);
    w[sp] = e;
    l = __fadd_rn(l, __fmul_rn(ml[2 * sp * heads + 1], e));  // never contracted: see the column loop
  }
  const float L = block_reduce(l, false, scratch);  // its barrier also publishes w
  const float inv = L > 0.0f ? 1.0f / L : 0.0f;
  const float* o = part_o + (b * splits * heads + h) * R;  // split sp at o[sp * heads * R]
  const int col = blockIdx.y * kThreads + threadIdx.x;     // one output column per thread
  if (col >= R) return;
  float acc = 0.0f;
  // Explicit roundings, never fused: however the compiler unrolls the loop, split sp adds the
  // same value, so the empty splits past a row's keys (exact zeros) change nothing.
#pragma unroll 4
  for (int sp = 0; sp < splits; ++sp) acc = __fadd_rn(acc, __fmul_rn(w[sp], o[(int64_t)sp * heads * R + col]));
  out[(b * heads + h) * R + col] = __float2bfloat16(acc * inv);
}

void check_launch(const char* what) { cuda_launch::check("paged MLA decode kernel", what); }

template <int R, int Q>
void launch(const Tensor& q, const Tensor& cache, const Tensor& table, const Tensor& lens, const int64_t* starts, Shapes s,
            int head_tiles, const Tensor& part_o, const Tensor& part_ml, bf16* out) {
  const size_t smem = smem_bytes(s.stride, Q);
  static std::array<std::atomic<bool>, 64> configured{};  // the opt-in above 48 KB, once per device
  const int device = q.get_device();
  if (device >= (int)configured.size() || !configured[device].exchange(true))
    cudaFuncSetAttribute(paged_mla_split_kernel<R, Q>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  const dim3 grid((unsigned)s.splits, (unsigned)((s.rows + Q - 1) / Q), (unsigned)head_tiles);
  paged_mla_split_kernel<R, Q><<<grid, kThreads * Q, smem, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const bf16*>(q.data_ptr()), reinterpret_cast<const bf16*>(cache.data_ptr()),
      table.data_ptr<int64_t>(), lens.data_ptr<int64_t>(), starts, s, part_o.data_ptr<float>(), part_ml.data_ptr<float>(),
      out);
  check_launch("split");
}

bool rank_supported(int64_t r) { return r == 64 || r == 128 || r == 256 || r == 512; }

}  // namespace

bool paged_mla_supported(const Tensor& q, const Tensor& cache, int64_t latent_rank) {
  return q.is_cuda() && q.scalar_type() == at::kBFloat16 && cache.scalar_type() == at::kBFloat16 &&
         cache.size(-1) % 8 == 0 && rank_supported(latent_rank) && latent_rank <= cache.size(-1) &&
         smem_bytes((int)((cache.size(-1) + 15) / 16 * 16 + kPad)) <= 200 * 1024;
}

namespace {

// Runs both passes over rows [0, B) of q, lens and starts (or of the table's rows when starts is
// null), s.splits splits (of s.keys_per_split keys each, or even pieces of each row), into out (B, heads, r),
// queries rows a block (1 or kRunQueries); pass 1 in the pipelined form where `pipeline` is given
// (one query row a block, starts null).
void run(const Tensor& q, const Tensor& cache, const Tensor& table, const Tensor& lens, const int64_t* starts, Shapes s,
         int64_t latent_rank, const Tensor& out, int queries, const paged_mla::Pipeline* pipeline = nullptr) {
  const int64_t B = q.size(0), heads = q.size(1);
  s.rows = B;
  const int head_tiles = (int)((heads + kHeads - 1) / kHeads);
  auto f32 = q.options().dtype(at::kFloat);
  // One split: pass 1 writes the output, with no partial results.
  const bool one = s.splits == 1;
  Tensor part_o = at::empty({one ? 0 : B, s.splits, heads, latent_rank}, f32);
  Tensor part_ml = at::empty({one ? 0 : B, s.splits, heads, 2}, f32);
  bf16* direct = one ? reinterpret_cast<bf16*>(out.data_ptr()) : nullptr;
  auto go = [&](auto rank) {
    constexpr int R = decltype(rank)::value;
    if (queries == kRunQueries) launch<R, kRunQueries>(q, cache, table, lens, starts, s, head_tiles, part_o, part_ml, direct);
    else launch<R, 1>(q, cache, table, lens, starts, s, head_tiles, part_o, part_ml, direct);
  };
  if (pipeline)
    paged_mla::launch_pipelined(q, cache, table, lens, s, latent_rank, *pipeline, head_tiles, part_o.data_ptr<float>(),
                                part_ml.data_ptr<float>(), direct);
  else
    switch (latent_rank) {
      case 64: go(std::integral_constant<int, 64>()); break;
      case 128: go(std::integral_constant<int, 128>()); break;
      case 256: go(std::integral_constant<int, 256>()); break;
      default: go(std::integral_constant<int, 512>()); break;
    }
  if (one) return;
  const dim3 combine_grid((unsigned)(B * heads), (unsigned)((latent_rank + kThreads - 1) / kThreads));
  paged_mla_combine_kernel<<<combine_grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      part_o.data_ptr<float>(), part_ml.data_ptr<float>(), reinterpret_cast<bf16*>(out.data_ptr()), (int)heads,
      s.splits, (int)latent_rank);
  check_launch("combine");
}

Shapes shapes(const Tensor& q, const Tensor& cache, int64_t block_size, int64_t key_start, int64_t latent_rank,
              double scale, const char* what) {
  if (!paged_mla_supported(q, cache, latent_rank))
    throw Error(std::string(what) + ": unsupported dtype or shape (row width " + std::to_string(cache.size(-1)) +
                ", latent rank " + std::to_string(latent_rank) + ")");
  if (q.size(2) != cache.size(1) || !cache.is_contiguous())
    throw Error(std::string(what) + ": query width " + std::to_string(q.size(2)) + " against cache rows of " +
                std::to_string(cache.size(1)));
  Shapes s;
  s.heads = (int)q.size(1);
  s.D = (int)q.size(2);
  s.DP = (s.D + 15) / 16 * 16;
  s.stride = s.DP + kPad;
  s.rows = q.size(0);
  s.nblk = 0;
  s.block_size = block_size;
  s.key_start = key_start;
  s.balanced = false;
  s.scale_log2 = (float)(scale * M_LOG2E);
  return s;
}

// The decode kernel, in its first form or (pipeline given) its pipelined one.
Tensor decode(const Tensor& q, const Tensor& cache, const Tensor& table, const Tensor& lens, int64_t block_size,
              int64_t key_start, int64_t latent_rank, double scale, std::optional<paged_mla::Pipeline> pipeline) {
  const c10::cuda::CUDAGuard guard(q.device());
  const Tensor qc = q.contiguous(), tab = table.contiguous(), ln = lens.contiguous();
  Shapes s = shapes(qc, cache, block_size, key_start, latent_rank, scale, "paged MLA decode");
  const int64_t B = qc.size(0), heads = qc.size(1), nblk = tab.size(1);
  s.nblk = nblk;
  const int head_tiles = (int)((heads + kHeads - 1) / kHeads);
  if (pipeline && !paged_mla::pipelined_supported(s, latent_rank, *pipeline)) pipeline.reset();
  // Splits: as many as keep every block of the step resident at once (the first form: two blocks
  // a multiprocessor; the pipelined one: as many as its shared memory lets), at most one per two
  // tiles of the table (the first form) or one per 32 keys. Each row's keys are split evenly by
  // its own length (the kernel reads it), not by the table's capacity, which CUDA graphs round up.
  if (nblk * block_size >= (int64_t)1 << 31) throw Error("paged MLA decode: more than 2^31 key positions");
  const int64_t max_keys = nblk * block_size;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int per_sm = pipeline ? paged_mla::pipelined_blocks_per_sm(s, latent_rank, *pipeline) : 2;
  const int64_t want = std::max<int64_t>(1, per_sm * sms / (B * head_tiles));
  const int64_t keys_each = pipeline ? 32 : 2 * kKeys;
  const int64_t most = std::max<int64_t>(1, (max_keys + keys_each - 1) / keys_each);
  s.splits = (int)std::min({want, most, (int64_t)kMaxSplits});
  s.balanced = true;
  s.keys_per_split = 0;
  Tensor out = at::empty({B, heads, latent_rank}, qc.options());
  run(qc, cache, tab, ln, nullptr, s, latent_rank, out, 1, pipeline ? &*pipeline : nullptr);
  return out;
}

}  // namespace

Tensor paged_mla_decode(const Tensor& q, const Tensor& cache, const Tensor& table, const Tensor& lens,
                        int64_t block_size, int64_t key_start, int64_t latent_rank, double scale) {
  std::optional<paged_mla::Pipeline> pipeline;
  if (kernel_on_trial("mla_decode_pipeline")) pipeline = paged_mla::Pipeline{};
  return decode(q, cache, table, lens, block_size, key_start, latent_rank, scale, pipeline);
}

Tensor paged_mla_decode_pipelined(const Tensor& q, const Tensor& cache, const Tensor& table, const Tensor& lens,
                                  int64_t block_size, int64_t key_start, int64_t latent_rank, double scale, int keys,
                                  int stages) {
  return decode(q, cache, table, lens, block_size, key_start, latent_rank, scale, paged_mla::Pipeline{keys, stages});
}

Tensor paged_mla_attention_invariant(const Tensor& q, const Tensor& cache, const Tensor& table, const Tensor& starts,
                                     const Tensor& lens, int64_t max_keys, int64_t block_size, int64_t latent_rank,
                                     double scale, bool query_runs) {
  const c10::cuda::CUDAGuard guard(q.device());
  const Tensor qc = q.contiguous(), tab = table.contiguous(), st = starts.contiguous(), ln = lens.contiguous();
  Shapes s = shapes(qc, cache, block_size, 0, latent_rank, scale, "batch-invariant MLA attention");
  if (max_keys > kMaxSplits * kInvariantSplitKeys)
    throw Error("batch-invariant MLA attention: " + std::to_string(max_keys) + " keys; at most " +
                std::to_string(kMaxSplits * kInvariantSplitKeys) + " are supported");
  const int64_t B = qc.size(0), heads = qc.size(1);
  // Splits at fixed key positions: a row's pieces, and the order they are combined in, depend on
  // its own keys alone. More splits than a row needs add exact zeros to its sums.
  s.keys_per_split = kInvariantSplitKeys;
  s.splits = (int)std::max<int64_t>(1, (max_keys + kInvariantSplitKeys - 1) / kInvariantSplitKeys);
  Tensor out = at::empty({B, heads, latent_rank}, qc.options());
  // Runs of one sequence's tokens take kRunQueries rows a block, where their shared memory fits.
  static const int64_t smem_limit = [] {
    int dev = 0, v = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    return (int64_t)v;
  }();
  const int queries = query_runs && (int64_t)smem_bytes(s.stride, kRunQueries) <= smem_limit ? kRunQueries : 1;
  // Rows a launch at a time (a whole number of blocks' rows): the grid's second dimension, and the
  // partial results' workspace.
  const int64_t per_row = (int64_t)s.splits * heads * latent_rank * (int64_t)sizeof(float);
  const int64_t most = std::min<int64_t>(65535, ((int64_t)256 << 20) / per_row);
  const int64_t chunk = std::max<int64_t>(queries, most / queries * queries);
  for (int64_t r0 = 0; r0 < B; r0 += chunk) {
    const int64_t n = std::min(chunk, B - r0);
    run(qc.narrow(0, r0, n), cache, tab, ln.narrow(0, r0, n), st.narrow(0, r0, n).data_ptr<int64_t>(), s, latent_rank,
        out.narrow(0, r0, n), queries);
  }
  return out;
}

}  // namespace grpo::model::cuda
