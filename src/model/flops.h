// Model FLOPs, as MFU is usually counted (PaLM's appendix B): 2 FLOPs per multiply-add of the matrix
// products a forward pass runs with its active parameters (routed experts: the top-k and the
// shared ones, plus the router), plus the attention scores and weighted sums over the causal
// context; norms, activations and softmax are not counted. A backward pass is twice its forward;
// recomputation under activation checkpointing is not model FLOPs.
#pragma once

#include <cstdint>

#include "config/model_config.h"

namespace grpo::model {

// FLOPs of one forward pass over a sequence of `tokens` tokens whose last `logit_tokens` go through
// the output projection.
double forward_flops(const ModelConfig& c, int64_t tokens, int64_t logit_tokens);

}  // namespace grpo::model
