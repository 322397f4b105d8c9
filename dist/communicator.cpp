#include "dist/communicator.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef GRPO_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cstdlib>

#include "util/error.h"

namespace grpo::dist {

namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (!v) return std::nullopt;
  return std::string(v);
}

int env_int(const char* name, std::optional<int> dflt, int lo, int hi) {
  auto v = env(name);
  if (!v) {
    if (dflt) return *dflt;
    throw Error(std::string("environment variable ") + name + " is not set (start the ranks with grpo launch or torchrun)");
  }
  char* end = nullptr;
  long x = std::strtol(v->c_str(), &end, 10);
  if (v->empty() || *end != '\0' || x < lo || x > hi)
    throw Error(std::string("environment variable ") + name + "='" + *v + "' is not an integer in [" + std::to_string(lo) +
                ", " + std::to_string(hi) + "]");
  return static_cast<int>(x);
}

// Gloo moves CPU tensors, NCCL tensors on the rank's GPU: others go through a copy there and back.
template <typename F>
void on_device(const at::Device& device, std::vector<at::Tensor>& tensors, F&& op) {
  std::vector<at::Tensor> moved;
  for (auto& t : tensors) moved.push_back(t.device() == device && t.is_contiguous() ? t : t.to(device).contiguous());
  op(moved);
  for (size_t i = 0; i < tensors.size(); ++i)
    if (!moved[i].is_same(tensors[i])) tensors[i].copy_(moved[i]);
}

}  // namespace

std::optional<DistEnv> read_dist_env() {
  if (!env("WORLD_SIZE")) return std::nullopt;
  DistEnv e;
  e.world_size = env_int("WORLD_SIZE", std::nullopt, 1, 1 << 20);
  e.rank = env_int("RANK", std::nullopt, 0, e.world_size - 1);
  e.local_world_size = env_int("LOCAL_WORLD_SIZE", 1, 1, e.world_size);
  e.local_rank = env_int("LOCAL_RANK", 0, 0, e.local_world_size - 1);
  e.master_addr = env("MASTER_ADDR").value_or("127.0.0.1");
  e.master_port = env_int("MASTER_PORT", 29500, 1, 65535);
  return e;
}

struct Communicator::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> pg;  // Gloo (CPU) or NCCL (CUDA)
  at::Device device = at::kCPU;          // where the backend's tensors live

  // Starts and waits for one collective per tensor (Gloo reduces lists of same-shaped tensors only).
  template <typename Start>
  void run(std::vector<at::Tensor>& tensors, const char* what, int rank, Start&& start) {
    try {
      for (auto& t : tensors) {
        std::vector<at::Tensor> one{t};
        start(one)->wait();
      }
    } catch (const std::exception& e) {
      throw Error(std::string("rank ") + std::to_string(rank) + ": " + what + " across ranks failed (another rank " +
                  "stopped or timed out?): " + e.what());
    }
  }
};

Communicator::Communicator(DistEnv env, std::unique_ptr<Impl> impl) : env_(std::move(env)), impl_(std::move(impl)) {}
Communicator::~Communicator() {
  // An orderly end of the backend (what destroy_process_group does in Python); never throws.
  try {
    if (impl_ && impl_->pg) impl_->pg->shutdown();
  } catch (...) {
  }
}

std::unique_ptr<Communicator> Communicator::connect(const DistEnv& e, at::Device device, std::chrono::milliseconds timeout) {
#ifndef GRPO_WITH_NCCL
  if (device.is_cuda())
    throw Error("ranks on CUDA need the NCCL backend, and this build has none (nccl.h was not found when it was "
                "configured); run data-parallel jobs on CPU (Gloo)");
#endif
  auto impl = std::make_unique<Impl>();
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(e.master_port);
    so.isServer = e.rank == 0;
    so.numWorkers = e.world_size;
    so.waitWorkers = true;
    so.timeout = timeout;
    impl->store = c10::make_intrusive<c10d::TCPStore>(e.master_addr, so);
    if (device.is_cuda()) {
#ifdef GRPO_WITH_NCCL
      impl->device = device;
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      impl->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl->store, e.rank, e.world_size, opts);
#endif
    } else {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(
          e.master_addr == "localhost" || e.master_addr.rfind("127.", 0) == 0 ? "127.0.0.1" : e.master_addr));
      impl->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, e.rank, e.world_size, opts);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& ex) {
    throw Error("rank " + std::to_string(e.rank) + " of " + std::to_string(e.world_size) + ": joining the job at " +
                e.master_addr + ":" + std::to_string(e.master_port) + " failed: " + ex.what());
  }
  return std::unique_ptr<Communicator>(new Communicator(e, std::move(impl)));
}

void Communicator::all_reduce_sum(std::vector<at::Tensor>& tensors) {
  on_device(impl_->device, tensors, [&](std::vector<at::Tensor>& t) {
    impl_->run(t, "all-reduce", rank(), [&](std::vector<at::Tensor>& one) { return impl_->pg->allreduce(one); });
  });
}

void Communicator::all_reduce_max(std::vector<at::Tensor>& tensors) {
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MAX;
  on_device(impl_->device, tensors, [&](std::vector<at::Tensor>& t) {
    impl_->run(t, "all-reduce (max)", rank(), [&](std::vector<at::Tensor>& one) { return impl_->pg->allreduce(one, o); });
  });
}

void Communicator::all_reduce_min(std::vector<at::Tensor>& tensors) {
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MIN;
  on_device(impl_->device, tensors, [&](std::vector<at::Tensor>& t) {
    impl_->run(t, "all-reduce (min)", rank(), [&](std::vector<at::Tensor>& one) { return impl_->pg->allreduce(one, o); });
  });
}

std::vector<double> Communicator::sum(const std::vector<double>& values) {
  if (values.empty()) return {};
  std::vector<at::Tensor> t{at::tensor(values, at::kDouble)};
  all_reduce_sum(t);
  auto a = t[0].accessor<double, 1>();
  std::vector<double> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = a[i];
  return out;
}

double Communicator::max(double value) {
  std::vector<at::Tensor> t{at::tensor({value}, at::kDouble)};
  all_reduce_max(t);
  return t[0].item<double>();
}

void Communicator::reduce_sum(std::vector<at::Tensor>& tensors, int root) {
  c10d::ReduceOptions o;
  o.rootRank = root;
  on_device(impl_->device, tensors, [&](std::vector<at::Tensor>& t) {
    impl_->run(t, "reduce", rank(), [&](std::vector<at::Tensor>& one) { return impl_->pg->reduce(one, o); });
  });
}

void Communicator::broadcast(std::vector<at::Tensor>& tensors, int root) {
  c10d::BroadcastOptions o;
  o.rootRank = root;
  on_device(impl_->device, tensors, [&](std::vector<at::Tensor>& t) {
    impl_->run(t, "broadcast", rank(), [&](std::vector<at::Tensor>& one) { return impl_->pg->broadcast(one, o); });
  });
}

std::vector<std::string> Communicator::all_gather(const std::string& mine) {
  std::vector<double> lengths(world_size(), 0.0);
  lengths[rank()] = (double)mine.size();
  lengths = sum(lengths);
  std::vector<std::string> out(world_size());
  for (int r = 0; r < world_size(); ++r) {
    const int64_t n = (int64_t)lengths[r];
    if (n == 0) continue;
    std::vector<at::Tensor> t{r == rank() ? at::from_blob(const_cast<char*>(mine.data()), {n}, at::kByte).clone()
                                          : at::empty({n}, at::kByte)};
    broadcast(t, r);
    out[r].assign(reinterpret_cast<const char*>(t[0].data_ptr<uint8_t>()), (size_t)n);
  }
  return out;
}

namespace {

// Starts one collective on `flat` (moved to the backend's device if need be); the returned wait
// finishes it and copies the result back.
template <typename Start>
std::unique_ptr<PendingCollective> start_on_device(const at::Device& device, at::Tensor flat, const char* what, int rank,
                                                   Start&& start) {
  at::Tensor moved = flat.device() == device && flat.is_contiguous() ? flat : flat.to(device).contiguous();
  std::vector<at::Tensor> one{moved};
  c10::intrusive_ptr<c10d::Work> work;
  auto fail = [what, rank](const std::exception& e) {
    return Error(std::string("rank ") + std::to_string(rank) + ": " + what + " across ranks failed (another rank " +
                 "stopped or timed out?): " + e.what());
  };
  try {
    work = start(one);
  } catch (const std::exception& e) {
    throw fail(e);
  }
  return std::make_unique<PendingCollective>([work, moved, flat, fail]() mutable {
    try {
      work->wait();
    } catch (const std::exception& e) {
      throw fail(e);
    }
    if (!moved.is_same(flat)) flat.copy_(moved);
  });
}

}  // namespace

std::unique_ptr<PendingCollective> Communicator::start_all_reduce_sum(at::Tensor flat) {
  return start_on_device(impl_->device, std::move(flat), "all-reduce", rank(),
                         [&](std::vector<at::Tensor>& one) { return impl_->pg->allreduce(one); });
}

std::unique_ptr<PendingCollective> Communicator::start_reduce_sum(at::Tensor flat, int root) {
  c10d::ReduceOptions o;
  o.rootRank = root;
  return start_on_device(impl_->device, std::move(flat), "reduce", rank(),
                         [&](std::vector<at::Tensor>& one) { return impl_->pg->reduce(one, o); });
}

void Communicator::barrier() {
  std::vector<at::Tensor> t{at::zeros({1})};
  all_reduce_sum(t);  // a collective every rank must reach (on the backend's device)
}

}  // namespace grpo::dist
