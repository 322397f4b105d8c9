#include "rollout/decode_graphs.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "rollout/upload.h"

namespace grpo::rollout {

DecodeGraphs::DecodeGraphs(Forward forward, int32_t dummy_block, int64_t block_size, at::Device device)
    : forward_(std::move(forward)), dummy_block_(dummy_block), block_size_(block_size), device_(device) {}

int64_t DecodeGraphs::bucket(int64_t n) {
  int64_t b = 1;
  while (b < n) b *= 2;
  return b;
}

void DecodeGraphs::pad_rows(std::vector<int64_t>& packed, int64_t Bb, int64_t nb, int64_t from) const {
  for (int64_t b = from; b < Bb; ++b) {
    packed[b] = 0;                                        // token
    packed[Bb + b] = 0;                                   // position
    packed[2 * Bb + b] = (int64_t)dummy_block_ * block_size_;  // write slot
    packed[3 * Bb + b] = 1;                               // length
    for (int64_t i = 0; i < nb; ++i) packed[4 * Bb + b * nb + i] = dummy_block_;
  }
}

DecodeGraphs::Graph& DecodeGraphs::graph_for(int64_t Bb, int64_t nb) {
  auto& g = graphs_[{Bb, nb}];
  if (g) return *g;
  g = std::make_unique<Graph>();
  // Inputs that touch only the dummy block until real ones are copied in.
  std::vector<int64_t> init(4 * Bb + Bb * nb, dummy_block_);
  pad_rows(init, Bb, nb, 0);
  g->packed = at::from_blob(init.data(), {(int64_t)init.size()}, at::TensorOptions().dtype(at::kLong)).clone().to(device_);
  auto stream = at::cuda::getStreamFromPool();
  stream.synchronize();
  {
    at::cuda::CUDAStreamGuard guard(stream);
    forward_(g->packed, Bb, nb);  // warm-up: lazy initialisation stays out of the graph
    stream.synchronize();
    g->graph.capture_begin(pool_);
    g->logits = forward_(g->packed, Bb, nb);
    g->graph.capture_end();
    if (pool_.first == 0 && pool_.second == 0) pool_ = g->graph.pool();
  }
  stream.synchronize();
  return *g;
}

at::Tensor DecodeGraphs::run(const at::Tensor& packed, int64_t Bb, int64_t nb, int64_t B, const Fill& fill) {
  Graph& g = graph_for(Bb, nb);
  upload_into(g.packed, packed);
  if (fill) fill(g.packed);
  g.graph.replay();
  return g.logits.narrow(0, 0, B);
}

}  // namespace grpo::rollout
