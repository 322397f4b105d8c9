#include "trainer/moe_balance.h"

#include <c10/core/GradMode.h>

#include "trainer/device_scalars.h"

namespace grpo::trainer {

std::vector<model::MoE> moe_layers(model::CausalLM& m) {
  std::vector<model::MoE> out;
  for (int64_t l = 0; l < m.config().num_hidden_layers; ++l) {
    auto layer = m.model->layers[l]->as<model::DecoderLayer>();
    if (layer->moe) out.push_back(layer->moe);
  }
  return out;
}

double update_routing_bias(model::CausalLM& m, const std::vector<at::Tensor>& loads, double speed) {
  c10::NoGradGuard no_grad;
  auto layers = moe_layers(m);
  DeviceScalars ratios;  // read once, after every layer's bias has moved
  for (size_t l = 0; l < layers.size() && l < loads.size(); ++l) {
    const at::Tensor& load = loads[l];
    ratios.add(load.max() / load.mean().clamp_min(1e-9));
    at::Tensor& bias = layers[l]->gate->e_score_correction_bias;
    if (speed > 0 && bias.defined()) bias.add_((load.mean() - load).sign().to(bias.device()) * speed);
  }
  double spread = 0;
  for (double r : ratios.read()) spread += r;
  return loads.empty() ? 0 : spread / loads.size();
}

}  // namespace grpo::trainer
