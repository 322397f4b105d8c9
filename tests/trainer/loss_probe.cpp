// Reads random inputs (JSON) for the GRPO objective, prints the loss, its gradient with respect to
// the policy log-probs and the advantages; tests/trainer/loss_test.py checks them against a plain
// PyTorch implementation of the published formulas.
#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "trainer/grpo_loss.h"

using json = nlohmann::json;
using at::Tensor;

Tensor mat(const json& j) {
  std::vector<double> flat;
  int64_t rows = j.size(), cols = j[0].size();
  for (auto& r : j)
    for (auto& v : r) flat.push_back(v.get<double>());
  return at::tensor(flat, at::kDouble).view({rows, cols});
}

int main(int argc, char** argv) {
  std::ifstream f(argv[1]);
  json cases = json::parse(f), out = json::array();
  for (const auto& c : cases) {
    using namespace grpo::trainer;
    if (c.contains("aux")) {  // the sequence-level MoE balance loss
      Tensor scores = mat(c["scores"]).requires_grad_();
      std::vector<int64_t> ex;
      for (auto& row : c["experts"])
        for (auto& v : row) ex.push_back(v.get<int64_t>());
      Tensor experts = at::tensor(ex, at::kLong).view({scores.size(0), -1});
      Tensor mask = mat(c["mask"]);
      Tensor loss = sequence_aux_loss(scores, experts, mask, c["alpha"].get<double>());
      Tensor g = torch::autograd::grad({loss}, {scores})[0].contiguous();
      Tensor load = expert_load(experts, mask, scores.size(1)).to(at::kDouble).contiguous();
      json o = {{"loss", loss.item<double>()}};
      o["grad"] = std::vector<double>(g.data_ptr<double>(), g.data_ptr<double>() + g.numel());
      o["load"] = std::vector<double>(load.data_ptr<double>(), load.data_ptr<double>() + load.numel());
      out.push_back(o);
      continue;
    }
    std::vector<double> rw = c["rewards"].get<std::vector<double>>();
    AdvantageConfig ac;
    ac.scale_rewards = c["scale_rewards"];
    ac.batch_std = c["batch_std"];
    Tensor adv = group_advantages(at::tensor(rw, at::kDouble), c["G"].get<int64_t>(), ac);
    LossInputs in;
    in.logp = mat(c["logp"]).requires_grad_();
    in.old_logp = mat(c["old_logp"]);
    in.ref_logp = mat(c["ref_logp"]);
    in.mask = mat(c["mask"]);
    in.advantages = adv;
    LossConfig lc;
    lc.type = parse_loss_type(c["loss_type"]);
    lc.epsilon_low = c["epsilon_low"];
    lc.epsilon_high = c["epsilon_high"];
    lc.beta = c["beta"];
    lc.kl = parse_kl_estimator(c["kl"]);
    lc.max_completion_length = c["max_completion_length"];
    if (c.contains("rollout_is")) {
      lc.rollout_is = parse_rollout_is(c["rollout_is"]);
      lc.rollout_is_mode = parse_rollout_is_mode(c["rollout_is_mode"]);
      lc.rollout_is_threshold = c["rollout_is_threshold"];
      in.rollout_logp = mat(c["rollout_logp"]);
    }
    auto r = grpo_loss(in, lc);
    auto grads = torch::autograd::grad({r.loss}, {in.logp});
    Tensor g = grads[0].contiguous();
    Tensor raw = r.stats.contiguous();
    const LossStats st(raw.data_ptr<double>());
    json o = {{"loss", r.loss.item<double>()}, {"clip_fraction", st.clip_fraction}, {"kl", st.kl},
              {"is_ratio_mean", st.is_ratio_mean}, {"is_ratio_min", st.is_ratio_min}, {"is_ratio_max", st.is_ratio_max},
              {"is_clipped_fraction", st.is_clipped_fraction}};
    o["advantages"] = std::vector<double>(adv.data_ptr<double>(), adv.data_ptr<double>() + adv.numel());
    o["grad"] = std::vector<double>(g.data_ptr<double>(), g.data_ptr<double>() + g.numel());
    out.push_back(o);
  }
  std::cout << out.dump() << "\n";
}
