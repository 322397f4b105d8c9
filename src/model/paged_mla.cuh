// What the two forms of the paged MLA decode kernel share (model/paged_mla_cuda.h): the problem's
// shapes, a block's shape, and the launch of the pipelined form (paged_mla_pipelined_cuda.cu), whose
// splits the first form's file combines. Included by those two files only.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace grpo::model::cuda::paged_mla {

constexpr int kHeads = 16;  // heads per block: the m of one tensor-core step
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kPad = 8;  // bf16 of padding per shared row: conflict-free fragment loads

struct Shapes {
  int heads, D, DP, stride;  // row width, padded to 16, shared row stride
  int64_t rows, nblk, block_size, key_start, keys_per_split;
  int splits;
  bool balanced;  // each row's keys in `splits` even pieces (whole tiles) of its own length
  float scale_log2;
};

// The pipelined form's block: key tiles of `keys` rows (16 or 32), `stages` of them in shared
// memory at once.
struct Pipeline {
  int keys = 32, stages = 2;
};

// Whether the pipelined form takes a row width of s.DP for this rank and pipeline (each warp holds
// a quarter of the width's query fragments in registers, at most rank / 64 + 1 steps of 16).
bool pipelined_supported(const Shapes& s, int64_t latent_rank, Pipeline p);

// Blocks of the pipelined form a multiprocessor holds at once.
int pipelined_blocks_per_sm(const Shapes& s, int64_t latent_rank, Pipeline p);

// Pass 1 in the pipelined form over the rows of q, one block per (split, row, head tile): into
// out (one split) or part_o / part_ml, as the first form's pass 1 writes them.
void launch_pipelined(const at::Tensor& q, const at::Tensor& cache, const at::Tensor& table, const at::Tensor& lens,
                      const Shapes& s, int64_t latent_rank, Pipeline p, int head_tiles, float* part_o, float* part_ml,
                      void* out);

}  // namespace grpo::model::cuda::paged_mla
