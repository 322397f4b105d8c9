// A rank's connection to the other ranks of a job, over PyTorch's c10d: the rendezvous through a
// TCPStore at MASTER_ADDR:MASTER_PORT (rank 0 serves it) and the collectives of the Gloo backend
// on CPU or the NCCL backend on CUDA (one GPU per rank), the engines PyTorch's DDP uses. Ranks come from torchrun's environment variables, so a job
// starts under `grpo launch` or `torchrun --no-python` alike. Every collective has a timeout: a rank
// that died makes the others fail with an error instead of hanging.
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace grpo::dist {

struct DistEnv {
  int rank = 0, world_size = 1, local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
};

// torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT);
// nullopt when WORLD_SIZE is unset (a process started on its own). A malformed or missing variable
// is an error naming it.
std::optional<DistEnv> read_dist_env();

// A collective started and not yet waited for (communication overlapping compute): wait() returns
// when its result is in the tensor it was started on, and throws like the blocking calls.
class PendingCollective {
 public:
  explicit PendingCollective(std::function<void()> wait) : wait_(std::move(wait)) {}
  void wait() {
    auto w = std::move(wait_);
    wait_ = nullptr;
    if (w) w();
  }

 private:
  std::function<void()> wait_;
};

class Communicator {
 public:
  // Joins the job (blocks until every rank has arrived, at most `timeout`): Gloo when `device` is
  // the CPU, NCCL on `device` when it is a GPU (refused with an error in a build without NCCL).
  static std::unique_ptr<Communicator> connect(const DistEnv& env, at::Device device,
                                               std::chrono::milliseconds timeout = std::chrono::minutes(10));
  ~Communicator();

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  bool is_main() const { return env_.rank == 0; }

  // In place, on every rank: the element-wise sum (or max/min) over ranks. Tensors may live on
  // the model's device; they travel through the CPU for Gloo.
  void all_reduce_sum(std::vector<at::Tensor>& tensors);
  void all_reduce_max(std::vector<at::Tensor>& tensors);
  void all_reduce_min(std::vector<at::Tensor>& tensors);
  // Sums of host values, one collective for the whole vector.
  std::vector<double> sum(const std::vector<double>& values);
  double max(double value);
  // The element-wise sum over ranks into rank `root`'s tensors (the others' are left undefined in value).
  void reduce_sum(std::vector<at::Tensor>& tensors, int root);
  // Rank `root`'s tensors, copied into every rank's.
  void broadcast(std::vector<at::Tensor>& tensors, int root = 0);
  void barrier();
  // Started now, finished by PendingCollective::wait(): the sum over ranks of `flat` (one tensor)
  // into every rank's, or into rank `root`'s only. Collectives start in the same order on every rank.
  std::unique_ptr<PendingCollective> start_all_reduce_sum(at::Tensor flat);
  std::unique_ptr<PendingCollective> start_reduce_sum(at::Tensor flat, int root);
  // Every rank's string, in rank order, on every rank (the lengths in one all-reduce, then each
  // rank's bytes by broadcast).
  std::vector<std::string> all_gather(const std::string& mine);

 private:
  struct Impl;
  Communicator(DistEnv env, std::unique_ptr<Impl> impl);
  DistEnv env_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace grpo::dist
