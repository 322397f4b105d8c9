// Run by ctest under `grpo launch --nproc-per-node 3`: every collective of dist::Communicator over
// Gloo, checked on every rank against what it must produce. Exits 1 on a wrong value.
#include <cstdio>
#include <cstdlib>

#include "dist/communicator.h"

using namespace grpo;

int main() {
  auto env = dist::read_dist_env();
  if (!env) {
    fprintf(stderr, "communicator_check: run me under grpo launch with --nproc-per-node > 1\n");
    return 2;
  }
  auto comm = dist::Communicator::connect(*env, at::kCPU, std::chrono::seconds(60));
  const int r = comm->rank(), W = comm->world_size();
  int bad = 0;
  auto expect = [&](bool ok, const char* what) {
    if (!ok) {
      fprintf(stderr, "rank %d: wrong %s\n", r, what);
      ++bad;
    }
  };
  // Sum of (rank + 1) * [1, 2, 3, 4] in fp32 and of a double vector.
  std::vector<at::Tensor> t{at::arange(1, 5, at::kFloat) * (r + 1), at::full({2, 3}, (double)r, at::kDouble)};
  comm->all_reduce_sum(t);
  const double s = W * (W + 1) / 2.0;
  expect(at::equal(t[0], at::arange(1, 5, at::kFloat) * s), "fp32 sum");
  expect(at::equal(t[1], at::full({2, 3}, W * (W - 1) / 2.0, at::kDouble)), "fp64 sum");
  auto host = comm->sum({1.0, (double)r});
  expect(host[0] == W && host[1] == W * (W - 1) / 2.0, "host sum");
  expect(comm->max(r * 10.0) == (W - 1) * 10.0, "max");
  std::vector<at::Tensor> m{at::tensor({(float)r, (float)-r})};
  comm->all_reduce_min(m);
  expect(m[0][0].item<float>() == 0 && m[0][1].item<float>() == -(W - 1), "min");
  // Rank 1's tensors everywhere.
  std::vector<at::Tensor> b{at::full({3}, (float)r), at::full({5}, (double)r * 2, at::kDouble)};
  comm->broadcast(b, 1);
  expect(at::equal(b[0], at::full({3}, 1.0f)) && at::equal(b[1], at::full({5}, 2.0, at::kDouble)), "broadcast");
  comm->barrier();
  printf("rank %d of %d: %s\n", r, W, bad ? "FAILED" : "all collectives right");
  return bad ? 1 : 0;
}
