// The wide batch-invariant product (model/invariant_gemm_cuda.h).
//
// One block of 8 warps per BM x 128 tile of outputs (one row tile, one column tile; consecutive
// blocks take the same rows and successive columns, so x is read from memory once and w stays in
// L2), two blocks a multiprocessor. BM is 128 for a prefill's many rows; 16, 32 or 64 for the
// grouped products of decode ("staged_tiles": each expert's weights then go through
// shared memory once per tile of its rows). K goes through shared memory 32 values at a time, in
// kStages buffers filled by cp.async while earlier ones are used. The warps are WM x WN: warp (wm,
// wn) computes RT 16-row and CT 8-column tensor-core tiles (128 rows: 2 x 4 warps of 4 x 4 tiles),
// each fed as gemm_nt_bf16_kernel feeds its own (lane (g, t) reads values 8t .. 8t + 7 of a row in
// one 16-byte load, here from shared memory, where rows of 64 bytes make the loads of a
// quarter-warp fall in distinct banks). A part's running sum (acc, in registers) is added to the
// total (in shared memory) at the part's last chunk. Compiled without contraction (--fmad=false),
// like the other batch-invariant kernels.
#include "model/invariant_gemm_cuda.h"

#include <array>
#include <atomic>
#include <string>

#include "model/cuda_launch.h"
#include "model/kernel_trial.h"
#include "model/mma.cuh"
#include "util/error.h"

namespace grpo::model::invariant::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kWideCols = 128;
constexpr int kChunk = 32;  // values of k a stage holds: one pair of tensor-core steps
constexpr int kStages = 3;
constexpr int kThreads = 256;

// The shapes of a BM-row tile: warps WM x WN, each RT x CT tensor-core tiles, kSums outputs a
// thread; the stages (48 KB at 128 rows), then the totals (64 KB at 128 rows): two blocks a
// multiprocessor.
template <int BM>
struct WideShape {
  static constexpr int WM = BM >= 32 ? 2 : 1, WN = 8 / WM, RT = BM / (16 * WM), CT = kWideCols / (8 * WN);
  static constexpr int kSums = RT * CT * 4;
  static constexpr size_t kStageBytes = (size_t)kStages * (BM + kWideCols) * kChunk * sizeof(bf16);
  static constexpr size_t kSmem = kStageBytes + (size_t)kSums * kThreads * sizeof(float);
};

template <int BM>
__global__ void __launch_bounds__(kThreads, 2) wide_gemm_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                                void* __restrict__ out, bool bf16_out, int64_t M,
                                                                int64_t N, int64_t K, int64_t part_len,
                                                                const int64_t* __restrict__ tiles, int64_t col_tiles) {
  using S = WideShape<BM>;
  constexpr int RT = S::RT, CT = S::CT;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* As = reinterpret_cast<bf16*>(smem);  // [kStages][BM][kChunk]
  bf16* Bs = As + kStages * BM * kChunk;     // [kStages][kWideCols][kChunk]
  // [kSums][kThreads]: each thread's totals, in shared memory rather than registers (they change
  // once per part, eight times a tile); thread-minor, so the accesses are conflict-free.
  float* totals = reinterpret_cast<float*>(smem + S::kStageBytes) + threadIdx.x;
  const int64_t tile = blockIdx.x / col_tiles, col0 = blockIdx.x % col_tiles * kWideCols;
  int64_t group = 0, row0, rows;
  if (tiles) {
    group = tiles[3 * tile];
    row0 = tiles[3 * tile + 1];
    rows = tiles[3 * tile + 2];
  } else {
    row0 = tile * BM;
    rows = min((int64_t)BM, M - row0);
  }
  if (rows <= 0) return;  // an unused slot of a table sized for the worst case
  const bf16* wp = w + group * N * K;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int wm = warp / S::WN, wn = warp % S::WN;

  // Thread tid copies pieces tid and tid + 256 of w's 128 rows x four 16-byte pieces, and those
  // of x's BM rows that exist: row i / 4, values 8 (i % 4) .. + 7 of the chunk; rows outside the
  // problem, and values past K, are zeros.
  const bf16* xsrc[2];
  const bf16* wsrc[2];
  int offset[2], piece[2];
  bool xrow[2], wrow[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int i = tid + h * kThreads, r = i / 4;
    piece[h] = 8 * (i % 4);
    offset[h] = r * kChunk + piece[h];
    xrow[h] = r < rows;
    wrow[h] = col0 + r < N;
    xsrc[h] = xrow[h] ? x + (row0 + r) * K + piece[h] : x;
    wsrc[h] = wrow[h] ? wp + (col0 + r) * K + piece[h] : wp;
  }
  auto load = [&](int stage, int64_t k0) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const bool in_k = k0 + piece[h] < K, va = in_k && xrow[h], vb = in_k && wrow[h];
      if (tid + h * kThreads < BM * 4) cp_async16(As + stage * BM * kChunk + offset[h], va ? xsrc[h] + k0 : x, va);
      cp_async16(Bs + stage * kWideCols * kChunk + offset[h], vb ? wsrc[h] + k0 : wp, vb);
    }
  };

  // f(r, j, e) for each of the thread's sums: row tile r, column tile j, element e of the fragment
  // (rows g and g + 8, columns 2t and 2t + 1).
  auto each_sum = [](auto f) {
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
      for (int j = 0; j < CT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) f(r, j, e);
  };
  float acc[RT][CT][4];
  each_sum([&](int r, int j, int e) { acc[r][j][e] = 0.0f; });
  // total = acc for the first part, total + acc for the others; acc back to 0.
  auto fold = [&](bool first) {
    each_sum([&](int r, int j, int e) {
      float& total = totals[((r * CT + j) * 4 + e) * kThreads];
      total = first ? acc[r][j][e] : __fadd_rn(total, acc[r][j][e]);
      acc[r][j][e] = 0.0f;
    });
  };

  const int chunks = (int)((K + kChunk - 1) / kChunk), per_part = (int)(part_len / kChunk);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < chunks) load(s, (int64_t)s * kChunk);
    cp_async_commit();
  }
  int part = 0;
  for (int c = 0; c < chunks; ++c) {
    cp_async_wait<kStages - 2>();  // chunk c has landed (for this thread's copies)
    __syncthreads();               // for everyone's; and chunk c - 1's buffer is free again
    {
      const int next = c + kStages - 1;
      if (next < chunks) load(next % kStages, (int64_t)next * kChunk);
      cp_async_commit();
    }
    const int stage = c % kStages;
    const bf16* A = As + (stage * BM + wm * RT * 16 + g) * kChunk + 8 * t;
    const bf16* B = Bs + (stage * kWideCols + wn * CT * 8 + g) * kChunk + 8 * t;
    uint4 b[CT];
#pragma unroll
    for (int j = 0; j < CT; ++j) b[j] = *reinterpret_cast<const uint4*>(B + 8 * j * kChunk);
#pragma unroll
    for (int r = 0; r < RT; ++r) {
      const uint4 a_lo = *reinterpret_cast<const uint4*>(A + 16 * r * kChunk);
      const uint4 a_hi = *reinterpret_cast<const uint4*>(A + (16 * r + 8) * kChunk);
#pragma unroll
      for (int j = 0; j < CT; ++j) {
        mma_bf16(acc[r][j], a_lo.x, a_hi.x, a_lo.y, a_hi.y, b[j].x, b[j].y);
        mma_bf16(acc[r][j], a_lo.z, a_hi.z, a_lo.w, a_hi.w, b[j].z, b[j].w);
      }
    }
    if ((c + 1) % per_part == 0 || c + 1 == chunks) fold(part++ == 0);
  }
  cp_async_wait<0>();
  for (; part < kProductParts; ++part) fold(part == 0);  // the empty parts past K: each adds 0

  each_sum([&](int r, int j, int e) {
    const int row = wm * RT * 16 + 16 * r + g + (e >= 2 ? 8 : 0);
    const int64_t n = col0 + wn * CT * 8 + 8 * j + 2 * t + (e & 1);
    if (row >= rows || n >= N) return;
    const int64_t at = (row0 + row) * N + n;
    const float total = totals[((r * CT + j) * 4 + e) * kThreads];
    if (bf16_out)
      static_cast<bf16*>(out)[at] = __float2bfloat16_rn(total);
    else
      static_cast<float*>(out)[at] = total;
  });
}

}  // namespace

bool use_wide_products(int64_t rows, int64_t groups) {
  return rows >= 1024 && rows >= 64 * groups;
}

bool use_staged_tiles() { return kernel_adopted("staged_tiles"); }

namespace {

template <int BM>
void launch_wide(const bf16* x, const bf16* w, void* out, bool bf16_out, int64_t M, int64_t N, int64_t K,
                 const int64_t* tiles, int64_t blocks, int64_t col_tiles, at::Device device, cudaStream_t stream) {
  constexpr size_t smem = WideShape<BM>::kSmem;
  if constexpr (smem > 48 * 1024) {
    static std::array<std::atomic<bool>, 64> configured{};  // the opt-in above 48 KB, once per device (not in a graph)
    if (device.index() >= (int)configured.size() || !configured[device.index()].exchange(true))
      cudaFuncSetAttribute(wide_gemm_kernel<BM>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  }
  wide_gemm_kernel<BM><<<(unsigned)blocks, kThreads, smem, stream>>>(x, w, out, bf16_out, M, N, K,
                                                                     product_part_length(K), tiles, col_tiles);
}

}  // namespace

void wide_gemm_bf16(const bf16* x, const bf16* w, void* out, bool bf16_out, int64_t M, int64_t N, int64_t K,
                    const int64_t* tiles, int64_t num_tiles, at::Device device, cudaStream_t stream, int64_t tile_rows) {
  const int64_t col_tiles = (N + kWideCols - 1) / kWideCols;
  const int64_t row_tiles = tiles ? num_tiles : (M + tile_rows - 1) / tile_rows;
  const int64_t blocks = row_tiles * col_tiles;
  if (blocks == 0) return;
  if (blocks >= ((int64_t)1 << 31)) throw Error("batch-invariant wide product: " + std::to_string(blocks) + " tiles");
  switch (tile_rows) {
    case 16: launch_wide<16>(x, w, out, bf16_out, M, N, K, tiles, blocks, col_tiles, device, stream); break;
    case 32: launch_wide<32>(x, w, out, bf16_out, M, N, K, tiles, blocks, col_tiles, device, stream); break;
    case 64: launch_wide<64>(x, w, out, bf16_out, M, N, K, tiles, blocks, col_tiles, device, stream); break;
    case kWideRows: launch_wide<kWideRows>(x, w, out, bf16_out, M, N, K, tiles, blocks, col_tiles, device, stream); break;
    default: throw Error("batch-invariant wide product: tiles of " + std::to_string(tile_rows) + " rows (16, 32, 64 or 128)");
  }
  cuda_launch::check("batch-invariant CUDA kernel", "wide product");
}

}  // namespace grpo::model::invariant::cuda
