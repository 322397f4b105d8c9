#include "trainer/zero_shards.h"

#include <torch/nn/utils/clip_grad.h>

#include <cstdio>
#include <filesystem>
#include <utility>

#include "trainer/data_parallel.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace grpo::trainer {

using at::Tensor;

ZeroShards::ZeroShards(dist::Communicator* comm, int64_t zero_stage, const Policy& pol, std::vector<Tensor> extra)
    : comm_(comm), stage_(comm && zero_stage > 0 ? zero_stage : 0), extra_(std::move(extra)) {
  if (stage_ > 0) owner_ = assign_owners(trainable(pol), comm_->world_size());
}

std::vector<Tensor> ZeroShards::trainable(const Policy& pol) const {
  auto params = pol.trainable_parameters();
  params.insert(params.end(), extra_.begin(), extra_.end());
  return params;
}

std::vector<int> ZeroShards::extra_owner() const {
  return std::vector<int>(owner_.end() - (std::ptrdiff_t)extra_.size(), owner_.end());
}

std::vector<Tensor> ZeroShards::optimized(const Policy& pol) const {
  auto params = trainable(pol);
  if (!on()) return params;
  std::vector<Tensor> out;
  for (size_t i = 0; i < params.size(); ++i)
    if (owner_[i] == comm_->rank()) out.push_back(params[i]);
  return out;
}

std::string ZeroShards::shard_master(Policy& pol) const {
  if (!on() || pol.compute == pol.master || pol.has_lora()) return "";
  std::vector<bool> mine(pol.master->parameters().size());  // the master's tensors come first in owner_
  for (size_t i = 0; i < mine.size(); ++i) mine[i] = owner_[i] == comm_->rank();
  pol.shard_master(mine);
  const auto [held, all] = pol.master_bytes();
  char line[200];
  snprintf(line, sizeof line,
           "zero_stage %lld: each rank keeps its own share of the fp32 master weights and AdamW moments%s (this "
           "rank: %.3f of %.3f GB of master weights)",
           (long long)stage_, stage_ == 2 ? " and fp32 gradients" : "", held / 1e9, all / 1e9);
  return line;
}

int64_t ZeroShards::passes(const Policy& pol, int64_t mine) const {
  return reduces_per_pass(pol) ? (int64_t)comm_->max((double)mine) : mine;
}

void ZeroShards::after_pass(Policy& pol) const {
  if (!reduces_per_pass(pol)) return pol.accumulate_gradients();
  std::vector<Tensor> grads;  // the bf16 gradients of this pass, summed in fp32 onto their owners
  for (auto& p : pol.compute->parameters()) grads.push_back(std::exchange(p.mutable_grad(), Tensor()));
  reduce_into_owner_masters(*comm_, pol.compute->parameters(), grads, pol.master->parameters(), owner_);
}

double ZeroShards::reduce_and_clip(Policy& pol, double max_grad_norm) const {
  auto params = trainable(pol);
  if (pol.master_sharded()) {
    if (stage_ == 1) {  // the step's fp32 gradients, held here, onto their owners
      // (one entry per tensor on every rank, also on one that ran no micro-batch this step)
      pol.held_grads.resize(pol.master->parameters().size());
      reduce_into_owner_masters(*comm_, pol.compute->parameters(), pol.held_grads, pol.master->parameters(), owner_);
    }
    if (!extra_.empty()) {  // their fp32 gradients, kept on the tensors over the step, onto their owners
      std::vector<Tensor> grads;
      for (auto& t : extra_) grads.push_back(std::exchange(t.mutable_grad(), Tensor()));
      reduce_into_owner_masters(*comm_, extra_, grads, extra_, extra_owner());
    }
    auto master = pol.master->parameters();
    master.insert(master.end(), extra_.begin(), extra_.end());
    return clip_owned_gradients(*comm_, master, owner_, max_grad_norm);
  }
  if (stage_ == 2) return reduce_gradients_to_owners(*comm_, params, owner_, max_grad_norm);
  if (comm_) all_reduce_gradients(*comm_, params);
  return torch::nn::utils::clip_grad_norm_(params, max_grad_norm);
}

void ZeroShards::share_weights(Policy& pol) const {
  if (pol.master_sharded()) {
    pol.sync();  // this rank's tensors (and the buffers) rounded into the bf16 copy
    broadcast_from_owners(*comm_, pol.compute->parameters(), owner_);  // the others', in bf16, from their owners
    if (!extra_.empty()) broadcast_from_owners(*comm_, extra_, extra_owner());
    return;
  }
  if (on()) {
    auto params = trainable(pol);
    broadcast_from_owners(*comm_, params, owner_);
    // The optimizer zeroes only its own tensors' gradients: the others' must not carry over.
    for (size_t i = 0; i < params.size(); ++i)
      if (owner_[i] != comm_->rank()) params[i].mutable_grad() = Tensor();
  }
  pol.sync();
}

void ZeroShards::save(CheckpointStore& store, const std::string& name, Policy& pol,
                      const std::function<void(const std::string& dir)>& write,
                      const std::function<void(const std::string& dir)>& write_shard, bool state_sharded) const {
  if (!comm_) return store.save(name, write);
  const bool shards = on() && state_sharded;
  std::vector<Tensor> gathered;  // on rank 0: the master weights other ranks own, on the CPU
  if (pol.master_sharded())
    gathered = gather_master_to_main(*comm_, pol.compute->parameters(), pol.master->parameters(), owner_);
  auto master = pol.master->parameters();
  const at::TensorOptions held_as = master.empty() ? at::TensorOptions() : master[0].options();
  for (size_t i = 0; i < gathered.size(); ++i)
    if (gathered[i].defined()) master[i].set_data(gathered[i]);
  struct Release {  // the gathered weights let go again, whatever happens
    std::vector<Tensor>& m;
    const std::vector<Tensor>& g;
    at::TensorOptions as;
    ~Release() {
      for (size_t i = 0; i < g.size(); ++i)
        if (g[i].defined()) m[i].set_data(at::empty({0}, as));
    }
  } release{master, gathered, held_as};
  if (!comm_->is_main()) {
    comm_->barrier();  // with shards: rank 0 has staged its part; without: the checkpoint is out
    if (shards) {
      write_shard(store.staging_dir(name));
      comm_->barrier();  // this rank's share is in the staged directory
    }
    return;
  }
  try {
    store.save(name, [&](const std::string& dir) {
      write(dir);
      if (shards) {  // the other ranks add their shares before the directory is published
        comm_->barrier();
        comm_->barrier();
      }
    });
  } catch (...) {
    if (!shards) comm_->barrier();  // the others are waiting for the checkpoint: let them go on to the error
    throw;
  }
  if (!shards) comm_->barrier();
}

std::string ZeroShards::optimizer_file(const std::string& dir, bool state_sharded) const {
  if (!on() || !state_sharded || comm_->rank() == 0) return dir + "/optimizer.pt";
  return dir + "/optimizer-rank" + std::to_string(comm_->rank()) + ".pt";
}

std::string ZeroShards::resume_optimizer_file(const std::string& dir, bool state_sharded) const {
  if (state_sharded) {
    const std::string path = dir + "/trainer_state.json";
    const nlohmann::json j = parse_json(read_file(path), path);
    const int64_t saved_world = j.value("world_size", int64_t(1)), saved_stage = j.value("zero_stage", int64_t(0));
    const int64_t world = comm_ ? comm_->world_size() : 1;
    if ((saved_stage > 0 || stage_ > 0) && (saved_world != world || saved_stage != stage_))
      throw Error(dir + ": written by " + std::to_string(saved_world) + " rank(s) with zero_stage " +
                  std::to_string(saved_stage) + "; resume it with the same (this job: " + std::to_string(world) +
                  " ranks, zero_stage " + std::to_string(stage_) + ")");
  }
  const std::string file = optimizer_file(dir, state_sharded);
  if (!file_exists(file)) throw Error(dir + ": no " + std::filesystem::path(file).filename().string() + " for this rank");
  return file;
}

}  // namespace grpo::trainer
