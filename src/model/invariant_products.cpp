#include "model/invariant_products.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "model/invariant_vector.h"

namespace grpo::model::invariant::cpu {

namespace {

// Up to four adjacent rows of one group.
struct RowBlock {
  int64_t first, rows, group;
};

// One call's work: the row blocks in panels of kPanelBlocks, the weights in chunks; an item is a
// (panel, chunk) pair, its tiles row block by row block, so that the chunk stays in cache while the
// panel's blocks pass over it. Items run panel by panel, each panel's chunks in turn, so that the
// panel stays in cache while its chunks pass; threads take contiguous runs of items.
constexpr int64_t kPanelBlocks = 16;

struct Plan {
  const float* x;
  float* out;
  int64_t N, K;
  int64_t chunk;  // weight rows per chunk, a multiple of four
  int columns;    // weight rows per tile: as many as the instruction set's registers hold
  std::vector<RowBlock> blocks;
};

// R rows against weight rows [n0, n1): tiles of C weight rows, then single ones.
template <int R, int C, typename T>
GRPO_INLINE void row_block(const float* x, const T* w, int64_t K, float* out, int64_t N, int64_t n0, int64_t n1) {
  const float* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = x + r * K;
  int64_t n = n0;
  for (; n + C <= n1; n += C) {
    const T* cols[C];
    for (int c = 0; c < C; ++c) cols[c] = w + (n + c) * K;
    dot_tile<R, C>(rows, cols, K, out + n, N);
  }
  for (; n < n1; ++n) {
    const T* col = w + n * K;
    dot_tile<R, 1>(rows, &col, K, out + n, N);
  }
}

template <int C, typename T>
GRPO_INLINE void run_items(const Plan& p, const T* w, int64_t begin, int64_t end) {
  const int64_t nb = static_cast<int64_t>(p.blocks.size()), N = p.N, K = p.K, chunks = (N + p.chunk - 1) / p.chunk;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t first = i / chunks * kPanelBlocks, last = std::min(nb, first + kPanelBlocks);
    const int64_t n0 = i % chunks * p.chunk, n1 = std::min(N, n0 + p.chunk);
    for (int64_t blk = first; blk < last; ++blk) {
      const RowBlock& b = p.blocks[blk];
      const float* x = p.x + b.first * K;
      const T* wg = w + b.group * N * K;
      float* out = p.out + b.first * N;
      switch (b.rows) {
        case 4: row_block<4, C>(x, wg, K, out, N, n0, n1); break;
        case 3: row_block<3, C>(x, wg, K, out, N, n0, n1); break;
        case 2: row_block<2, C>(x, wg, K, out, N, n0, n1); break;
        default: row_block<1, C>(x, wg, K, out, N, n0, n1); break;
      }
    }
  }
}

template <typename T>
GRPO_INLINE void run_tiles(const Plan& p, const T* w, int64_t begin, int64_t end) {
  if (p.columns == 4)
    run_items<4>(p, w, begin, end);
  else if (p.columns == 2)
    run_items<2>(p, w, begin, end);
  else
    run_items<1>(p, w, begin, end);
}
// The weight types models use get the vector clones; the others the baseline.
GRPO_VECTOR_CLONES void run(const Plan& p, const float* w, int64_t begin, int64_t end) { run_tiles(p, w, begin, end); }
GRPO_VECTOR_CLONES void run(const Plan& p, const c10::BFloat16* w, int64_t begin, int64_t end) {
  run_tiles(p, w, begin, end);
}
template <typename T>
void run(const Plan& p, const T* w, int64_t begin, int64_t end) {
  run_tiles(p, w, begin, end);
}

// Weight rows per tile, so that the R x C sums, the C weight vectors and a row's vector stay in
// registers: 32 vector registers with AVX-512 (VL), 16 with AVX2; the baseline's eight-lane vectors
// take two registers each.
int tile_columns() {
#if defined(GRPO_CLONE_X86_64_V4)
  static const int columns = __builtin_cpu_supports("x86-64-v4") ? 4 : __builtin_cpu_supports("avx2") ? 2 : 1;
  return columns;
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  static const int columns = __builtin_cpu_supports("avx2") ? 2 : 1;
  return columns;
#else
  return 2;
#endif
}

}  // namespace

void products(const float* x, const at::Tensor& w, const int64_t* group, float* out, int64_t M) {
  const int64_t N = w.size(-2), K = w.size(-1);
  if (M == 0 || N == 0) return;
  Plan p{x, out, N, K, 0, tile_columns(), {}};
  for (int64_t m = 0; m < M;) {  // runs of one group, in blocks of up to four rows
    const int64_t g = group ? group[m] : 0;
    int64_t rows = 1;
    while (rows < 4 && m + rows < M && (group ? group[m + rows] : 0) == g) ++rows;
    p.blocks.push_back({m, rows, g});
    m += rows;
  }
  // Chunks of about 32 KB of weights (a core's L1 or L2 holds them beside a row block), at least one
  // tile wide.
  const int64_t row_bytes = K * static_cast<int64_t>(w.element_size());
  p.chunk = std::min((N + 3) / 4 * 4, std::max<int64_t>(4, (32 << 10) / std::max<int64_t>(row_bytes, 1) / 4 * 4));
  const int64_t panels = (static_cast<int64_t>(p.blocks.size()) + kPanelBlocks - 1) / kPanelBlocks;
  const int64_t items = (N + p.chunk - 1) / p.chunk * panels;
  // Items of less than about a quarter of a million multiply-adds are not worth a thread's wake-up.
  const int64_t item_products = std::min<int64_t>(M, 4 * kPanelBlocks) * p.chunk * K;
  const int64_t grain = std::max<int64_t>(1, (256 << 10) / std::max<int64_t>(1, item_products));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "invariant_products", [&] {
    const scalar_t* wp = w.data_ptr<scalar_t>();
    at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) { run(p, wp, begin, end); });
  });
}

}  // namespace grpo::model::invariant::cpu
