// Gradient communication overlapped with the backward pass, as PyTorch DDP's reducer does it: the
// trainable tensors are grouped into buckets of about bucket_cap_mb MiB in reverse parameter order
// (roughly the order in which the backward pass produces their gradients), and a bucket's collective
// starts from an autograd hook as soon as the last of its gradients has been accumulated, while the
// backward pass goes on. Buckets start in index order on every rank, so the ranks' collectives
// match; finish() starts those left (a gradient that never came counts as absent) and waits.
//
// Two modes:
//  - AllReduce (replicas, zero_stage 0): armed for the last backward pass of an optimizer step; every
//    rank ends with the fp32 gradients summed over ranks (in the master, when a bf16 copy computes);
//  - ReduceToOwners (zero_stage 2 with a sharded fp32 master): armed for every backward pass; each
//    bucket holds one owner's tensors and is reduced onto it, which adds the sums into its fp32
//    master gradients, and the bf16 gradients are released as their bucket leaves.
// A tensor whose gradient no rank produced gets none (AdamW then skips it, as on one rank): each
// bucket carries one presence flag per tensor. The sums are the blocking exchange's, bit for bit.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <mutex>
#include <vector>

#include "dist/communicator.h"

namespace grpo::trainer {

class OverlappedReduce {
 public:
  enum class Mode { AllReduce, ReduceToOwners };
  // `compute`: the tensors autograd fills (the bf16 copy, or the fp32 model itself); `master`: their
  // fp32 masters (the same tensors in fp32); `owner`: each tensor's owner rank (ReduceToOwners).
  OverlappedReduce(dist::Communicator& comm, Mode mode, std::vector<at::Tensor> compute, std::vector<at::Tensor> master,
                   std::vector<int> owner, double bucket_cap_mb);
  ~OverlappedReduce();  // removes the hooks
  OverlappedReduce(const OverlappedReduce&) = delete;
  OverlappedReduce& operator=(const OverlappedReduce&) = delete;

  // Before loss.backward(): the hooks act on the next backward pass.
  void arm();
  // After it (or instead of it, on a rank with nothing to train on): starts the buckets not yet
  // started, waits for all, and writes the sums into the fp32 gradients. Returns the share of
  // gradient bytes whose collective started during the backward pass.
  double finish();

  size_t buckets() const { return buckets_.size(); }

 private:
  struct Bucket {
    std::vector<size_t> tensors;  // indices into compute_/master_
    int root = -1;                // ReduceToOwners: the owner
    int64_t elements = 0;
    at::Tensor flat;  // gradients, then one presence flag per tensor
    std::unique_ptr<dist::PendingCollective> pending;
  };
  void on_gradient(size_t i);  // from tensor i's post-accumulate hook
  void start_ready_buckets(bool all);
  void start(Bucket& b);
  // Tensor i's gradient of this pass, moved out of the compute copy (fp32; undefined when none).
  at::Tensor take(size_t i);

  dist::Communicator& comm_;
  const Mode mode_;
  std::vector<at::Tensor> compute_, master_;
  std::vector<int> owner_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;
  std::vector<int> waiting_;  // per bucket: gradients still to come in this pass
  std::vector<bool> seen_;    // per tensor: its gradient came in this pass
  size_t next_ = 0;           // the first bucket not started
  bool armed_ = false;
  int64_t started_in_backward_ = 0, total_elements_ = 0;
  std::mutex mu_;
};

}  // namespace grpo::trainer
