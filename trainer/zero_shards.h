// ZeRO for a stage's policy (zero_stage 1 and 2 over the job's ranks): each trainable
// tensor has an owner rank (trainer/data_parallel.h's assign_owners), which alone keeps its AdamW
// moments and, with a bf16 compute copy of a full model, its fp32 master weights. zero_stage 2 also
// sends each micro-batch's gradients onto their owners at once, so that no rank holds the whole
// model's fp32 gradients. The ranks end every step with the weights one rank would have: the
// gradients summed as all_reduce_gradients sums them, clipped with clip_grad_norm_'s arithmetic on
// the global norm. Off (one rank, or zero_stage 0), every call is the replicated stage's. The grpo
// stage adds its overlapped exchange (trainer/overlapped_reduce.h) around these.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "trainer/policy.h"
#include "trainer/run_state.h"

namespace grpo::trainer {

class ZeroShards {
 public:
  // `extra`: tensors trained beside the policy's (a reward model's score head), fp32, owned and
  // updated like the others.
  ZeroShards(dist::Communicator* comm, int64_t zero_stage, const Policy& pol, std::vector<at::Tensor> extra = {});
  bool on() const { return stage_ > 0; }
  int64_t stage() const { return stage_; }  // the recipe's zero_stage, 0 without a communicator
  const std::vector<int>& owner() const { return owner_; }  // per trainable tensor, then extra; empty when off

  // The tensors this rank's optimizer updates: every trainable tensor (and extra one), or those it owns.
  std::vector<at::Tensor> optimized(const Policy& pol) const;
  // With a bf16 compute copy of a full model, lets go of the fp32 master weights other ranks own
  // (call once every rank holds the same weights). Returns a line for the log ("" when nothing is
  // let go).
  std::string shard_master(Policy& pol) const;

  // zero_stage 2 with a sharded master: each micro-batch's gradients go onto their owners at once.
  bool reduces_per_pass(const Policy& pol) const { return stage_ == 2 && pol.master_sharded(); }
  // Micro-batches each rank runs in a step where it has `mine`: zero_stage 2 with a sharded master
  // reduces after every one, so the ranks agree on the most (a rank with fewer adds empty ones).
  int64_t passes(const Policy& pol, int64_t mine) const;
  // After a micro-batch's backward pass: its gradients added into the fp32 master
  // (Policy::accumulate_gradients), or under zero_stage 2 with a sharded master summed over the
  // ranks onto their owners' at once. Every rank calls it passes() times a step.
  void after_pass(Policy& pol) const;
  // After the step's last pass: the summed gradients where this rank's optimizer reads them,
  // clipped to max_grad_norm. Returns the global gradient norm before clipping.
  double reduce_and_clip(Policy& pol, double max_grad_norm) const;
  // After the optimizer step: every tensor from its owner, into the compute copy every rank holds;
  // the gradients of tensors this rank does not update are dropped.
  void share_weights(Policy& pol) const;

  // Writes checkpoint `name` of `store` from rank 0 (`write(dir)` fills it) while the others wait;
  // with sharded AdamW state each other rank adds its own (`write_shard(dir)`) to the staged
  // directory before rank 0 publishes it, so that a kill at any moment leaves the whole
  // checkpoint or none. With a sharded master, `write` sees every master weight (gathered onto
  // rank 0 for it, on the CPU, and let go after). `state_sharded` false: this checkpoint's AdamW
  // state is whole on rank 0 (a grpo stage's warm start).
  void save(CheckpointStore& store, const std::string& name, Policy& pol,
            const std::function<void(const std::string& dir)>& write,
            const std::function<void(const std::string& dir)>& write_shard, bool state_sharded = true) const;
  // Where this rank's AdamW state lives in a checkpoint: optimizer.pt, or with sharded state rank
  // r's own optimizer-rank<r>.pt (rank 0's is optimizer.pt).
  std::string optimizer_file(const std::string& dir, bool state_sharded = true) const;
  // Resuming from checkpoint `dir`: this rank's optimizer file in it. Sharded state (the
  // checkpoint's, by its trainer_state.json, or this job's) resumes only with as many ranks and the
  // same zero_stage; an error names both otherwise, and names a missing file.
  std::string resume_optimizer_file(const std::string& dir, bool state_sharded = true) const;

 private:
  std::vector<at::Tensor> trainable(const Policy& pol) const;  // the policy's, then extra_
  std::vector<int> extra_owner() const;

  dist::Communicator* comm_ = nullptr;
  int64_t stage_ = 0;
  std::vector<at::Tensor> extra_;
  std::vector<int> owner_;  // per trainable tensor, then extra; empty when off
};

}  // namespace grpo::trainer
