#include "trainer/overlapped_reduce.h"

#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <map>
#include <string>

#include "util/error.h"

namespace grpo::trainer {

using at::Tensor;

namespace {

// Calls back with its tensor's index once autograd has accumulated the tensor's gradient.
struct AfterAccumulate : torch::autograd::PostAccumulateGradHook {
  std::function<void(size_t)> f;
  size_t index;
  AfterAccumulate(std::function<void(size_t)> f, size_t index) : f(std::move(f)), index(index) {}
  void operator()(const torch::autograd::Variable&) override { f(index); }
};

}  // namespace

OverlappedReduce::OverlappedReduce(dist::Communicator& comm, Mode mode, std::vector<Tensor> compute,
                                   std::vector<Tensor> master, std::vector<int> owner, double bucket_cap_mb)
    : comm_(comm), mode_(mode), compute_(std::move(compute)), master_(std::move(master)), owner_(std::move(owner)) {
  if (master_.size() != compute_.size() || (mode_ == Mode::ReduceToOwners && owner_.size() != compute_.size()))
    throw Error("overlapped gradient reduce: " + std::to_string(compute_.size()) + " tensors, " +
                std::to_string(master_.size()) + " masters and " + std::to_string(owner_.size()) + " owners");
  // Buckets in reverse parameter order; with owners, one open bucket per owner, closed when full.
  const int64_t cap = std::max<int64_t>(1, (int64_t)(bucket_cap_mb * (1 << 20) / 4));  // fp32 elements
  std::map<int, Bucket> open;
  auto close = [&](int root) {
    auto it = open.find(root);
    if (it == open.end()) return;
    buckets_.push_back(std::move(it->second));
    open.erase(it);
  };
  for (size_t k = compute_.size(); k-- > 0;) {
    const int root = mode_ == Mode::ReduceToOwners ? owner_[k] : -1;
    Bucket& b = open[root];
    b.root = root;
    b.tensors.push_back(k);
    b.elements += compute_[k].numel();
    total_elements_ += compute_[k].numel();
    if (b.elements >= cap) close(root);
  }
  while (!open.empty()) close(open.begin()->first);
  bucket_of_.resize(compute_.size());
  for (size_t b = 0; b < buckets_.size(); ++b)
    for (size_t k : buckets_[b].tensors) bucket_of_[k] = b;
  for (size_t k = 0; k < compute_.size(); ++k)
    torch::autograd::impl::set_post_acc_grad_hooks(
        compute_[k], std::make_unique<AfterAccumulate>([this](size_t i) { on_gradient(i); }, k));
}

OverlappedReduce::~OverlappedReduce() {
  for (auto& t : compute_) torch::autograd::impl::set_post_acc_grad_hooks(t, nullptr);
}

void OverlappedReduce::arm() {
  std::lock_guard<std::mutex> lock(mu_);
  waiting_.assign(buckets_.size(), 0);
  for (size_t b = 0; b < buckets_.size(); ++b) waiting_[b] = (int)buckets_[b].tensors.size();
  seen_.assign(compute_.size(), false);
  next_ = 0;
  started_in_backward_ = 0;
  armed_ = true;
}

Tensor OverlappedReduce::take(size_t i) {
  Tensor& g = compute_[i].mutable_grad();
  if (!g.defined()) return mode_ == Mode::AllReduce ? master_[i].grad() : Tensor();
  Tensor out = g.to(at::kFloat);
  g = Tensor();
  if (mode_ == Mode::ReduceToOwners || master_[i].is_same(compute_[i])) return out;
  // AllReduce with a bf16 copy: this pass's gradient joins the fp32 master's accumulated ones.
  Tensor& mg = master_[i].mutable_grad();
  if (mg.defined()) mg.add_(out);
  else mg = out;
  return mg;
}

void OverlappedReduce::on_gradient(size_t i) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!armed_) return;  // a backward pass this reduce is not meant for (an earlier micro-batch)
  if (seen_[i] || bucket_of_[i] < next_)
    throw Error("overlapped gradient reduce: tensor " + std::to_string(i) + "'s gradient came twice in one backward " +
                "pass (set overlap_grad_reduce: false)");
  seen_[i] = true;
  --waiting_[bucket_of_[i]];
  start_ready_buckets(false);
}

void OverlappedReduce::start_ready_buckets(bool all) {
  while (next_ < buckets_.size() && (all || waiting_[next_] == 0)) {
    if (!all) started_in_backward_ += buckets_[next_].elements;
    start(buckets_[next_++]);
  }
}

void OverlappedReduce::start(Bucket& b) {
  c10::NoGradGuard g;
  std::vector<Tensor> parts;
  std::vector<float> flags;
  at::TensorOptions opts = compute_[b.tensors[0]].options().dtype(at::kFloat);
  for (size_t k : b.tensors) {
    Tensor t = take(k);
    flags.push_back(t.defined() ? 1.f : 0.f);
    parts.push_back(t.defined() ? t.reshape({-1}) : at::zeros({compute_[k].numel()}, opts));
  }
  parts.push_back(at::tensor(flags, at::kFloat).to(opts.device()));
  b.flat = at::cat(parts);
  b.pending = mode_ == Mode::AllReduce ? comm_.start_all_reduce_sum(b.flat) : comm_.start_reduce_sum(b.flat, b.root);
}

double OverlappedReduce::finish() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!armed_) arm();  // a rank with no backward pass still takes part in every bucket
    armed_ = false;
    start_ready_buckets(true);
  }
  c10::NoGradGuard g;
  for (auto& b : buckets_) {
    b.pending->wait();
    b.pending.reset();
    if (mode_ == Mode::ReduceToOwners && b.root != comm_.rank()) {
      b.flat = Tensor();
      continue;
    }
    Tensor flags = b.flat.narrow(0, b.elements, (int64_t)b.tensors.size()).to(at::kCPU);
    int64_t off = 0;
    for (size_t j = 0; j < b.tensors.size(); ++j) {
      const size_t k = b.tensors[j];
      const int64_t n = compute_[k].numel();
      Tensor sum = b.flat.narrow(0, off, n).view(compute_[k].sizes());
      off += n;
      if (flags[j].item<float>() == 0) continue;  // no rank had a gradient for it
      Tensor& mg = master_[k].mutable_grad();
      if (mode_ == Mode::AllReduce) {
        if (mg.defined()) mg.copy_(sum);
        else mg = sum.clone();
      } else if (mg.defined()) {
        mg.add_(sum.to(master_[k].device()));
      } else {
        mg = sum.to(master_[k].device()).clone();
      }
    }
    b.flat = Tensor();
  }
  return total_elements_ > 0 ? (double)started_in_backward_ / total_elements_ : 0.0;
}

}  // namespace grpo::trainer
