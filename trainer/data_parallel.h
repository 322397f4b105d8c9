// Data parallelism for the GRPO trainer: what the ranks of a job exchange so that N ranks train
// exactly as one rank on the whole batch (c10d through dist::Communicator). Rollout sharding and
// the global loss normalisers stay in the trainer; here are the gradient exchange (replicated or
// ZeRO-sharded by owner rank) and the reduction of the step's figures.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "dist/communicator.h"
#include "trainer/step_metrics.h"

namespace grpo::trainer {

// An owner rank for each tensor (zero_stage 1 and 2): largest first, each to the least-loaded rank.
std::vector<int> assign_owners(const std::vector<at::Tensor>& params, int world_size);

// Sums every tensor's gradient over the ranks, in flat buckets of about 32 MiB. A gradient no rank
// produced stays undefined (AdamW then skips the tensor, as on one rank); one that only some ranks
// produced counts as zeros on the others.
void all_reduce_gradients(dist::Communicator& comm, const std::vector<at::Tensor>& params);

// zero_stage 2: each owner's gradients summed onto it (one flat reduce per owner), the others'
// copies dropped; clipped to max_grad_norm with clip_grad_norm_'s arithmetic on the same numbers as
// one rank. Returns the global gradient norm.
double reduce_gradients_to_owners(dist::Communicator& comm, const std::vector<at::Tensor>& params,
                                  const std::vector<int>& owner, double max_grad_norm);

// A sharded fp32 master (zero_stage 1 and 2 with a bf16 compute copy): `grads[i]` (bf16 or fp32;
// undefined where this rank has none) summed in fp32 over the ranks onto owner[i], in flat buckets,
// and added into master[i]'s gradient there; `grads` are cleared. `compute[i]` gives each shape.
// A gradient no rank has stays undefined on its owner.
void reduce_into_owner_masters(dist::Communicator& comm, const std::vector<at::Tensor>& compute,
                               std::vector<at::Tensor>& grads, const std::vector<at::Tensor>& master,
                               const std::vector<int>& owner);

// The owners' gradients clipped to max_grad_norm with clip_grad_norm_'s arithmetic over the global
// norm (every tensor's norm from its owner, in parameter order). Returns that norm.
double clip_owned_gradients(dist::Communicator& comm, const std::vector<at::Tensor>& params,
                            const std::vector<int>& owner, double max_grad_norm);

// A sharded fp32 master gathered for a checkpoint: on rank 0, the master tensors it does not hold,
// on the CPU (the others left undefined); nothing kept on the other ranks.
std::vector<at::Tensor> gather_master_to_main(dist::Communicator& comm, const std::vector<at::Tensor>& compute,
                                              const std::vector<at::Tensor>& master, const std::vector<int>& owner);

// After each rank's optimizer step on the tensors it owns: every tensor from its owner.
void broadcast_from_owners(dist::Communicator& comm, const std::vector<at::Tensor>& params,
                           const std::vector<int>& owner);

// The step's rollout figures over all ranks (sums, extremes, the slowest rank's times) and the
// update's (each rank holds its share of global means, so they add up).
void reduce_batch(dist::Communicator& comm, RolloutBatch& b);
void reduce_update(dist::Communicator& comm, UpdateStats& u);

// What a supervised stage (sft, distill, reward_model) needs from the job's ranks; every call is
// also right on one rank (a null communicator). Each step's examples are split over the ranks in
// order, sums of the step's figures go over every rank (the gradients through
// trainer/zero_shards.h), and rank 0 writes.
class StageRanks {
 public:
  explicit StageRanks(dist::Communicator* comm) : comm_(comm) {}
  bool main() const { return !comm_ || comm_->is_main(); }
  int world() const { return comm_ ? comm_->world_size() : 1; }
  dist::Communicator* comm() const { return comm_; }
  // This rank's share [first, last) of `count` consecutive items: the r-th of W equal parts.
  std::pair<int64_t, int64_t> share(int64_t count) const;
  std::vector<double> sum(const std::vector<double>& values) const { return comm_ ? comm_->sum(values) : values; }
  // Rank 0's tensors into every rank's (the starting weights).
  void broadcast_from_main(std::vector<at::Tensor> tensors) const;
  // A stop asked on any rank becomes a stop on every rank, at the same step.
  void agree_on_stop() const;
  // A checkpoint's trainer_state.json says how many ranks wrote it ("world_size", 1 when absent):
  // each step's examples were split over them, so it resumes only with as many (else an error).
  void check_resumable(const std::string& checkpoint_dir) const;
  // Rank 0 runs `write` while the others wait for it to finish.
  void on_main(const std::function<void()>& write) const;

 private:
  dist::Communicator* comm_;
};

}  // namespace grpo::trainer
