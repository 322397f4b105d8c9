// The batch-invariant matrix products on the CPU (matmul_nt and grouped_matmul_nt of
// invariant_kernels.h hand over here): out[m, n] = dot(x[m], w[group[m], n]) in the order of
// invariant_vector.h, whatever the other rows. The speed comes from computing tiles of up to four
// rows by four weight rows at once (sixteen independent sums in flight, each in its own order),
// from walking the weights in chunks that stay in cache while a panel of row blocks passes over
// them, and from sharing the (panel, chunk) pairs out among the threads.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace grpo::model::invariant::cpu {

// x (M, K) fp32 contiguous, w (G, N, K) contiguous of any floating dtype, group (M) the weight of
// each row (nullptr: all rows use w[0]); out (M, N) fp32. Rows of one group should be adjacent:
// they share tiles only when they are.
void products(const float* x, const at::Tensor& w, const int64_t* group, float* out, int64_t M);

}  // namespace grpo::model::invariant::cpu
