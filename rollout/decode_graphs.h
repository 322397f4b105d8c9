// CUDA graphs of the engine's decode step, one per (batch bucket, block-table bucket), both
// rounded up to powers of two. The step reads its inputs from one packed int64 device tensor
// [tokens (B) | positions (B) | write slots (B) | lengths (B) | block tables (B, nblk)], so a
// replay only copies the new inputs in. Padded rows (token 0 at position 0, length 1) read and
// write only the dummy block, which the block pool never hands out.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraph.h>

#include <functional>
#include <map>
#include <memory>
#include <vector>

namespace grpo::rollout {

class DecodeGraphs {
 public:
  // forward(packed, B, nblk) -> (B, V) fp32 logits, without host synchronisation.
  using Forward = std::function<at::Tensor(const at::Tensor& packed, int64_t B, int64_t nblk)>;
  DecodeGraphs(Forward forward, int32_t dummy_block, int64_t block_size, at::Device device);

  static int64_t bucket(int64_t n);  // the next power of two >= n
  // Rows [from, Bb) of a packed input for (Bb, nb) set to padding rows.
  void pad_rows(std::vector<int64_t>& packed, int64_t Bb, int64_t nb, int64_t from) const;
  // Replays the graph for (Bb, nb) on `packed` (host, Bb rows) and returns the first B rows' logits.
  // `fill`, when given, writes inputs already on the device into the graph's static input after
  // the host ones (the speculative step's drafts), so that the host never waits for them.
  using Fill = std::function<void(const at::Tensor& packed)>;
  at::Tensor run(const at::Tensor& packed, int64_t Bb, int64_t nb, int64_t B, const Fill& fill = {});
  // Whether the graph for (Bb, nb) is captured already (a first run captures it).
  bool has(int64_t Bb, int64_t nb) const { return graphs_.count({Bb, nb}) > 0; }

 private:
  struct Graph {
    at::cuda::CUDAGraph graph;
    at::Tensor packed;  // static input
    at::Tensor logits;  // static output (Bb, V) fp32
  };
  Graph& graph_for(int64_t Bb, int64_t nb);

  Forward forward_;
  int32_t dummy_block_;
  int64_t block_size_;
  at::Device device_;
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Graph>> graphs_;
  at::cuda::MempoolId_t pool_{0, 0};  // one memory pool shared by every graph
};

}  // namespace grpo::rollout
