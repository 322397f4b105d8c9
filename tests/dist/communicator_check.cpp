// Run under `grpo launch`: every collective of dist::Communicator, checked on every rank against what
// it must produce. Exits 1 on a wrong value. `communicator_check cuda` uses NCCL on GPU LOCAL_RANK
// (the GPU machine's smoke run: one rank on its one GPU); the default is Gloo on CPU.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "dist/communicator.h"

using namespace grpo;

int main(int argc, char** argv) {
  auto env = dist::read_dist_env();
  if (!env) {
    fprintf(stderr, "communicator_check: run me under grpo launch\n");
    return 2;
  }
  const bool cuda = argc > 1 && std::string(argv[1]) == "cuda";
  const at::Device device = cuda ? at::Device(at::kCUDA, env->local_rank) : at::Device(at::kCPU);
  auto comm = dist::Communicator::connect(*env, device, std::chrono::seconds(60));
  const int r = comm->rank(), W = comm->world_size();
  int bad = 0;
  auto expect = [&](bool ok, const char* what) {
    if (!ok) {
      fprintf(stderr, "rank %d: wrong %s\n", r, what);
      ++bad;
    }
  };
  // Sum of (rank + 1) * [1, 2, 3, 4] in fp32 and of a double vector.
  std::vector<at::Tensor> t{(at::arange(1, 5, at::kFloat) * (r + 1)).to(device), at::full({2, 3}, (double)r, at::kDouble)};
  comm->all_reduce_sum(t);
  t[0] = t[0].cpu();
  const double s = W * (W + 1) / 2.0;
  expect(at::equal(t[0], at::arange(1, 5, at::kFloat) * s), "fp32 sum");
  expect(at::equal(t[1], at::full({2, 3}, W * (W - 1) / 2.0, at::kDouble)), "fp64 sum");
  auto host = comm->sum({1.0, (double)r});
  expect(host[0] == W && host[1] == W * (W - 1) / 2.0, "host sum");
  expect(comm->max(r * 10.0) == (W - 1) * 10.0, "max");
  std::vector<at::Tensor> m{at::tensor({(float)r, (float)-r})};
  comm->all_reduce_min(m);
  expect(m[0][0].item<float>() == 0 && m[0][1].item<float>() == -(W - 1), "min");
  // The last rank's tensors everywhere.
  const int root = W - 1;
  std::vector<at::Tensor> b{at::full({3}, (float)r), at::full({5}, (double)r * 2, at::kDouble)};
  comm->broadcast(b, root);
  expect(at::equal(b[0], at::full({3}, (float)root)) && at::equal(b[1], at::full({5}, 2.0 * root, at::kDouble)), "broadcast");
  // Strings of different lengths (rank 1's empty), in rank order everywhere.
  auto strings = comm->all_gather(r == 1 ? std::string() : std::string(r + 2, (char)('a' + r)) + std::string("\n\0x", 3));
  bool same = (int)strings.size() == W;
  for (int k = 0; same && k < W; ++k) same = strings[k] == (k == 1 ? std::string() : std::string(k + 2, (char)('a' + k)) + std::string("\n\0x", 3));
  expect(same, "all_gather of strings");
  comm->barrier();
  printf("rank %d of %d (%s): %s\n", r, W, cuda ? "NCCL" : "Gloo", bad ? "FAILED" : "all collectives right");
  return bad ? 1 : 0;
}
