// Log-probabilities of target tokens under the output projection, without holding the logits: the
// (rows, vocabulary) fp32 logits of a mini-batch of 32k tokens and a 100k vocabulary are 13 GB,
// which autograd would keep from the forward to the backward. Here they are formed a chunk of rows
// at a time in both passes: the backward forms each chunk's logits again from the saved rows.
#pragma once

#include <ATen/ATen.h>

namespace grpo::model {

using at::Tensor;

// log softmax(h W^T)[targets] for rows h (M, H) and targets (M) int64, fp32 (M), differentiable in
// h and W: the logits as at::linear(h, W) in W's dtype, then fp32, as the plain chain forms them
// (the forward's values are its bits). `entropy`, when given, receives each row's entropy (no
// gradient). rows_per_chunk 0: as many rows as make 128 MB of fp32 logits. The backward's weight
// gradient sums its chunks in fp32.
Tensor token_logprobs(const Tensor& h, const Tensor& weight, const Tensor& targets, Tensor* entropy = nullptr,
                      int64_t rows_per_chunk = 0);

}  // namespace grpo::model
