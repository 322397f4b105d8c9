#include "trainer/data_parallel.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <functional>

#include "trainer/train.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace grpo::trainer {

using at::Tensor;

namespace {

// For each tensor, whether any rank has it (`here[i]` on this rank): one all-reduce of flags.
std::vector<bool> anywhere(dist::Communicator& comm, const std::vector<bool>& here) {
  std::vector<float> flags(here.begin(), here.end());
  std::vector<Tensor> t{at::tensor(flags, at::kFloat)};
  comm.all_reduce_max(t);
  auto a = t[0].accessor<float, 1>();
  std::vector<bool> out(here.size());
  for (size_t i = 0; i < here.size(); ++i) out[i] = a[i] != 0;
  return out;
}

// Whether any rank has a gradient for each tensor. Where some rank has one, the ranks without it
// get zeros, so that every rank takes part in the same collectives.
std::vector<bool> defined_anywhere(dist::Communicator& comm, const std::vector<Tensor>& params) {
  std::vector<bool> here(params.size());
  for (size_t i = 0; i < params.size(); ++i) here[i] = params[i].grad().defined();
  std::vector<bool> out = anywhere(comm, here);
  for (size_t i = 0; i < params.size(); ++i)
    if (out[i] && !here[i]) params[i].mutable_grad() = at::zeros_like(params[i]);
  return out;
}

// The tensors idx[...] in groups whose fp32 copies take at most `bucket_bytes` (at least one
// tensor each), in order: calls f(group's indices). `shape_of[i]` gives tensor i's size.
template <typename F>
void in_buckets(const std::vector<size_t>& idx, const std::vector<Tensor>& shape_of, int64_t bucket_bytes, F&& f) {
  for (size_t k = 0; k < idx.size();) {
    std::vector<size_t> b;
    int64_t bytes = 0;
    for (; k < idx.size() && (b.empty() || bytes + shape_of[idx[k]].numel() * 4 <= bucket_bytes); ++k) {
      b.push_back(idx[k]);
      bytes += shape_of[idx[k]].numel() * 4;
    }
    f(b);
  }
}

// Runs one collective over `tensors` flattened into a single buffer, then copies the result back.
template <typename Collective>
void through_flat_buffer(const std::vector<Tensor>& tensors, Collective&& collective) {
  std::vector<Tensor> flat;
  for (const auto& t : tensors) flat.push_back(t.detach().reshape({-1}));
  std::vector<Tensor> buf{at::cat(flat)};
  collective(buf);
  int64_t off = 0;
  for (const auto& t : tensors) {
    Tensor dst = t.detach();
    dst.copy_(buf[0].narrow(0, off, t.numel()).view(t.sizes()));
    off += t.numel();
  }
}

}  // namespace

std::vector<int> assign_owners(const std::vector<Tensor>& params, int world_size) {
  // Largest first, each to the least-loaded rank: about 1/N of the elements per rank.
  std::vector<size_t> order(params.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return params[x].numel() > params[y].numel(); });
  std::vector<int64_t> load(world_size, 0);
  std::vector<int> owner(params.size(), 0);
  for (size_t i : order) {
    int r = (int)(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = r;
    load[r] += params[i].numel();
  }
  return owner;
}

// Sums every trainable parameter's gradient over the ranks, in flat buckets of about 32 MiB. A
// gradient no rank produced stays undefined (AdamW then skips the parameter, as on one rank); one
// that only some ranks produced counts as zeros on the others.
void all_reduce_gradients(dist::Communicator& comm, const std::vector<Tensor>& params) {
  const std::vector<bool> defined = defined_anywhere(comm, params);
  std::vector<size_t> idx;
  for (size_t i = 0; i < params.size(); ++i)
    if (defined[i]) idx.push_back(i);
  in_buckets(idx, params, int64_t(32) << 20, [&](const std::vector<size_t>& b) {
    std::vector<Tensor> bucket;
    for (size_t i : b) bucket.push_back(params[i].grad());
    through_flat_buffer(bucket, [&](std::vector<Tensor>& buf) { comm.all_reduce_sum(buf); });
  });
}

// The step's rollout figures over all ranks: sums, extremes, the slowest rank's times. Rewards
// are already global (sample() gathers them for the advantages).
void reduce_batch(dist::Communicator& comm, RolloutBatch& b) {
  std::vector<double> v = {b.accuracy_sum, (double)b.accuracy_count, b.length_sum, (double)b.truncated,
                           (double)b.reward_errors, (double)b.groups, (double)b.zero_std_groups,
                           (double)b.kept_groups, (double)b.tokens};
  // Per-component sums travel when every rank has the same components (with rewards_by_source a
  // rank may have scored no prompt of some source; then rank 0's own are logged).
  std::string names;
  for (const auto& [name, sum] : b.component_sums) names += name + "\n";
  const double h = (double)(std::hash<std::string>{}(names) % 1000003);
  const bool same = comm.max(h) == -comm.max(-h);
  if (same)
    for (const auto& [name, sum] : b.component_sums) {
      v.push_back(sum);
      v.push_back((double)b.component_counts[name]);
    }
  v = comm.sum(v);
  b.accuracy_sum = v[0];
  b.accuracy_count = (int64_t)v[1];
  b.length_sum = v[2];
  b.truncated = (int64_t)v[3];
  b.reward_errors = (int64_t)v[4];
  b.groups = (int64_t)v[5];
  b.zero_std_groups = (int64_t)v[6];
  b.kept_groups = (int64_t)v[7];
  b.tokens = (int64_t)v[8];
  if (same) {
    size_t k = 9;
    for (auto& [name, sum] : b.component_sums) {
      sum = v[k++];
      b.component_counts[name] = (int64_t)v[k++];
    }
  }
  b.length_max = (int64_t)comm.max((double)b.length_max);
  b.length_min = (int64_t)-comm.max(b.length_min < 0 ? -1e18 : -(double)b.length_min);
  b.time_rollout = comm.max(b.time_rollout);
  b.time_reward = comm.max(b.time_reward);
}

// The update's figures are this rank's shares of global means (weighted by global token and
// sequence counts): their sums over ranks are the global values.
void reduce_update(dist::Communicator& comm, UpdateStats& u) {
  auto v = comm.sum({u.loss, u.kl, u.entropy, u.aux_loss, u.clip_fraction, u.clip_low, u.clip_high,
                       u.rollout_logprob_diff, u.model_flops, u.is_ratio_mean, u.is_clipped, u.mtp_loss});
  u.mtp_loss = v[11];
  u.is_ratio_mean = v[9];
  u.is_clipped = v[10];
  u.is_ratio_max = comm.max(u.is_ratio_max);
  u.is_ratio_min = -comm.max(-u.is_ratio_min);
  u.loss = v[0];
  u.kl = v[1];
  u.entropy = v[2];
  u.aux_loss = v[3];
  u.clip_fraction = v[4];
  u.clip_low = v[5];
  u.clip_high = v[6];
  u.rollout_logprob_diff = v[7];
  u.model_flops = v[8];
}

// zero_stage 2: every owner's gradients summed onto it (one flat reduce per owner), the others'
// copies dropped; the norm for clipping is the global one (squared norms summed over owners),
// and the clipping coefficient is clip_grad_norm_'s.
double reduce_gradients_to_owners(dist::Communicator& comm, const std::vector<Tensor>& params,
                                  const std::vector<int>& owner, double max_grad_norm) {
  const std::vector<bool> defined = defined_anywhere(comm, params);
  for (int r = 0; r < comm.world_size(); ++r) {
    std::vector<Tensor> grads;
    for (size_t i = 0; i < params.size(); ++i)
      if (owner[i] == r && defined[i]) grads.push_back(params[i].grad());
    if (grads.empty()) continue;
    through_flat_buffer(grads, [&](std::vector<Tensor>& buf) { comm.reduce_sum(buf, r); });
    if (r != comm.rank())
      for (size_t i = 0; i < params.size(); ++i)
        if (owner[i] == r) params[i].mutable_grad() = Tensor();  // only the owner keeps it
  }
  return clip_owned_gradients(comm, params, owner, max_grad_norm);
}

double clip_owned_gradients(dist::Communicator& comm, const std::vector<Tensor>& params, const std::vector<int>& owner,
                            double max_grad_norm) {
  // clip_grad_norm_'s arithmetic on the same numbers as one rank: every parameter's gradient norm
  // (from its owner; zeros elsewhere, so the sum is exact), in parameter order, then the norm of those.
  // A second row says which parameters have a gradient anywhere.
  std::vector<Tensor> norms{at::zeros({2, (int64_t)params.size()}, at::kFloat)};
  for (size_t i = 0; i < params.size(); ++i)
    if (owner[i] == comm.rank() && params[i].grad().defined()) {
      norms[0][0][i] = params[i].grad().norm(2).to(at::kCPU);
      norms[0][1][i] = 1;
    }
  comm.all_reduce_sum(norms);
  // The norm of the norms on the parameters' device, by the kernel clip_grad_norm_ uses there.
  const Tensor all = params.empty() ? norms[0][0] : norms[0][0].to(params[0].device());
  std::vector<Tensor> with_grad;
  for (size_t i = 0; i < params.size(); ++i)
    if (norms[0][1][i].item<float>() != 0) with_grad.push_back(all[i]);
  if (with_grad.empty()) return 0.0;
  Tensor total = with_grad.size() == 1 ? with_grad[0] : at::stack(with_grad).norm(2);
  Tensor coef = at::clamp(max_grad_norm / (total + 1e-6), std::nullopt, 1.0);
  for (size_t i = 0; i < params.size(); ++i)
    if (owner[i] == comm.rank() && params[i].grad().defined()) params[i].mutable_grad().mul_(coef.to(params[i].device()));
  return total.item<double>();
}

void reduce_into_owner_masters(dist::Communicator& comm, const std::vector<Tensor>& compute, std::vector<Tensor>& grads,
                               const std::vector<Tensor>& master, const std::vector<int>& owner) {
  c10::NoGradGuard g;
  std::vector<bool> here(grads.size());
  for (size_t i = 0; i < grads.size(); ++i) here[i] = grads[i].defined();
  const std::vector<bool> present = anywhere(comm, here);
  for (int r = 0; r < comm.world_size(); ++r) {
    std::vector<size_t> idx;
    for (size_t i = 0; i < grads.size(); ++i)
      if (owner[i] == r && present[i]) idx.push_back(i);
    in_buckets(idx, compute, int64_t(256) << 20, [&](const std::vector<size_t>& b) {
      std::vector<Tensor> flat;
      for (size_t i : b)
        flat.push_back(grads[i].defined() ? grads[i].detach().reshape({-1}).to(at::kFloat)
                                          : at::zeros({compute[i].numel()}, compute[i].options().dtype(at::kFloat)));
      std::vector<Tensor> buf{at::cat(flat)};
      comm.reduce_sum(buf, r);
      if (r != comm.rank()) return;
      int64_t off = 0;
      for (size_t i : b) {
        Tensor sum = buf[0].narrow(0, off, compute[i].numel()).view(compute[i].sizes());
        off += compute[i].numel();
        Tensor mg = master[i];
        if (mg.grad().defined()) mg.mutable_grad().add_(sum.to(mg.device()));
        else mg.mutable_grad() = sum.to(mg.device()).clone();
      }
    });
  }
  for (auto& t : grads) t = Tensor();
}

std::vector<Tensor> gather_master_to_main(dist::Communicator& comm, const std::vector<Tensor>& compute,
                                          const std::vector<Tensor>& master, const std::vector<int>& owner) {
  c10::NoGradGuard g;
  std::vector<Tensor> out(master.size());
  for (int r = 1; r < comm.world_size(); ++r) {
    std::vector<size_t> idx;
    for (size_t i = 0; i < master.size(); ++i)
      if (owner[i] == r) idx.push_back(i);
    in_buckets(idx, compute, int64_t(256) << 20, [&](const std::vector<size_t>& b) {
      std::vector<Tensor> flat;
      int64_t n = 0;
      for (size_t i : b) n += compute[i].numel();
      std::vector<Tensor> buf;
      if (r == comm.rank()) {
        for (size_t i : b) flat.push_back(master[i].detach().reshape({-1}));
        buf.push_back(at::cat(flat));
      } else {
        buf.push_back(at::empty({n}, compute[b[0]].options().dtype(at::kFloat)));
      }
      comm.broadcast(buf, r);
      if (comm.rank() != 0) return;
      int64_t off = 0;
      for (size_t i : b) {
        out[i] = buf[0].narrow(0, off, compute[i].numel()).view(compute[i].sizes()).to(at::kCPU).clone();
        off += compute[i].numel();
      }
    });
  }
  return out;
}

// After each rank's optimizer step on its own parameters: every parameter from its owner.
void broadcast_from_owners(dist::Communicator& comm, const std::vector<Tensor>& params, const std::vector<int>& owner) {
  c10::NoGradGuard g;
  for (int r = 0; r < comm.world_size(); ++r) {
    std::vector<Tensor> owned;
    for (size_t i = 0; i < params.size(); ++i)
      if (owner[i] == r) owned.push_back(params[i]);
    if (!owned.empty()) through_flat_buffer(owned, [&](std::vector<Tensor>& buf) { comm.broadcast(buf, r); });
  }
}

std::pair<int64_t, int64_t> StageRanks::share(int64_t count) const {
  const int64_t per = (count + world() - 1) / world(), r = comm_ ? comm_->rank() : 0;
  return {std::min(count, r * per), std::min(count, (r + 1) * per)};
}

void StageRanks::broadcast_from_main(std::vector<Tensor> tensors) const {
  if (!comm_) return;
  c10::NoGradGuard g;
  comm_->broadcast(tensors, 0);
}

void StageRanks::agree_on_stop() const {
  if (comm_ && comm_->max(stop_requested() ? 1.0 : 0.0) > 0) request_stop();
}

void StageRanks::check_resumable(const std::string& dir) const {
  const std::string path = dir + "/trainer_state.json";
  const int64_t w = parse_json(read_file(path), path).value("world_size", int64_t(1));
  if (w != world())
    throw Error(dir + ": written by " + std::to_string(w) + " rank(s); resume it with the same number (this job: " +
                std::to_string(world()) + ")");
}

void StageRanks::on_main(const std::function<void()>& write) const {
  if (!comm_) return write();
  if (comm_->is_main()) {
    try {
      write();
    } catch (...) {
      comm_->barrier();
      throw;
    }
  }
  comm_->barrier();
}

}  // namespace grpo::trainer
