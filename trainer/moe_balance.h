// MoE balance during training (DeepSeek-V3): the aux-loss-free update of each router's selection
// bias from the step's expert load over real tokens, and the load statistics. The balance loss
// itself (sequence_aux_loss) and the load count (expert_load) are in trainer/grpo_loss.h.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "model/causal_lm.h"

namespace grpo::trainer {

// The MoE layers of `model`, in layer order (the order of CompletionOutputs::routing).
std::vector<model::MoE> moe_layers(model::CausalLM& model);

// Raises the e_score_correction_bias of under-loaded experts by `speed` and lowers it for
// over-loaded ones (sign(mean load - load)), for each MoE layer with such a bias; `loads` holds one
// (E) load per MoE layer. Returns the mean over layers of max load / mean load (1 = balanced).
double update_routing_bias(model::CausalLM& model, const std::vector<at::Tensor>& loads, double speed);

}  // namespace grpo::trainer
