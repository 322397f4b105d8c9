// Data parallelism for the GRPO trainer: what the ranks of a job exchange so that N ranks train
// exactly as one rank on the whole batch (c10d through dist::Communicator). Rollout sharding and
// the global loss normalisers stay in the trainer; here are the gradient exchange (replicated or
// ZeRO-sharded by owner rank) and the reduction of the step's figures.
#pragma once

#include <ATen/ATen.h>

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

// After each rank's optimizer step on the tensors it owns: every tensor from its owner.
void broadcast_from_owners(dist::Communicator& comm, const std::vector<at::Tensor>& params,
                           const std::vector<int>& owner);

// The step's rollout figures over all ranks (sums, extremes, the slowest rank's times) and the
// update's (each rank holds its share of global means, so they add up).
void reduce_batch(dist::Communicator& comm, RolloutBatch& b);
void reduce_update(dist::Communicator& comm, UpdateStats& u);

}  // namespace grpo::trainer
