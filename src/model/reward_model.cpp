#include "model/reward_model.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <torch/nn/init.h>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace grpo::model {

using at::Tensor;

Tensor score_last_tokens(const Tensor& hidden, const Tensor& ids, int64_t pad_token_id, const torch::nn::Linear& score) {
  const int64_t B = ids.size(0), T = ids.size(1);
  // The rightmost non-pad position, as transformers finds it (0 for a row of pad tokens only).
  Tensor positions = at::arange(T, ids.options());
  Tensor last = (positions * ids.ne(pad_token_id).to(at::kLong)).argmax(-1);
  Tensor rows = at::arange(B, ids.options());
  Tensor h = hidden.index({rows, last});  // (B, H)
  return at::linear(h.to(score->weight.scalar_type()), score->weight).squeeze(-1).to(at::kFloat);
}

Tensor RewardModel::rewards(const std::vector<std::vector<int64_t>>& sequences) {
  int64_t T = 1;
  for (const auto& s : sequences) T = std::max<int64_t>(T, (int64_t)s.size());
  const int64_t B = (int64_t)sequences.size();
  std::vector<int64_t> flat(B * T, pad_token_id);
  for (int64_t b = 0; b < B; ++b) std::copy(sequences[b].begin(), sequences[b].end(), flat.begin() + b * T);
  Tensor ids = at::from_blob(flat.data(), {B, T}, at::TensorOptions().dtype(at::kLong)).clone().to(backbone->device());
  // Right padding: plain causal attention is exact for every real token.
  Tensor hidden = backbone->hidden_states(ids);
  return score_last_tokens(hidden, ids, pad_token_id, score);
}

int64_t reward_pad_token_id(const std::string& config_text, const ModelConfig& config) {
  nlohmann::json cfg = parse_json(config_text, "config.json");
  if (cfg.contains("pad_token_id") && cfg["pad_token_id"].is_number_integer()) return cfg["pad_token_id"].get<int64_t>();
  if (config.eos_token_id) return *config.eos_token_id;
  return 0;
}

torch::nn::Linear new_score_head(const CausalLM& backbone, uint64_t seed) {
  const ModelConfig& c = backbone.config();
  torch::nn::Linear score(torch::nn::LinearOptions(c.hidden_size, 1).bias(false));
  at::NoGradGuard g;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  Tensor w = at::empty({1, c.hidden_size}, at::TensorOptions().dtype(at::kFloat));
  w.normal_(0.0, c.initializer_range, gen);
  score->weight.copy_(w);
  score->to(backbone.device(), at::kFloat);
  return score;
}

RewardModel load_reward_model(const std::string& dir, const LoadOptions& options) {
  RewardModel rm;
  LoadOptions o = options;
  o.without_lm_head = true;
  rm.backbone = load_model(dir, o);
  rm.config_text = read_file(dir + "/config.json");
  rm.pad_token_id = reward_pad_token_id(rm.config_text, rm.backbone->config());
  io::SafetensorsCheckpoint ck = io::SafetensorsCheckpoint::open_dir(dir);
  const io::TensorView* tv = ck.find("score.weight");
  if (!tv) throw Error(dir + ": no 'score.weight': not a reward model (a ...ForSequenceClassification checkpoint)");
  const int64_t H = rm.backbone->config().hidden_size;
  if (tv->shape != std::vector<int64_t>{1, H})
    throw Error(ck.file_of("score.weight") + ": 'score.weight' has shape [" + std::to_string(tv->shape.size() > 0 ? tv->shape[0] : 0) +
                ", ...], expected [1, " + std::to_string(H) + "] (one label)");
  rm.score = torch::nn::Linear(torch::nn::LinearOptions(H, 1).bias(false));
  {
    at::NoGradGuard g;
    at::ScalarType st = tv->dtype == io::DType::F32 ? at::kFloat : tv->dtype == io::DType::BF16 ? at::kBFloat16 : at::kHalf;
    if (tv->dtype != io::DType::F32 && tv->dtype != io::DType::BF16 && tv->dtype != io::DType::F16)
      throw Error(ck.file_of("score.weight") + ": 'score.weight' must be F32, BF16 or F16");
    Tensor w = at::from_blob(const_cast<uint8_t*>(tv->data), {1, H}, at::TensorOptions().dtype(st));
    rm.score->weight.copy_(w.to(at::kFloat));
  }
  rm.score->to(rm.backbone->device(), at::kFloat);
  return rm;
}

void save_reward_model(CausalLM& backbone, const Tensor& score_weight, const std::string& config_text,
                       int64_t pad_token_id, const std::string& dir, at::ScalarType dtype) {
  SaveOptions o;
  o.dtype = dtype;
  o.extra_tensors.emplace_back("score.weight", score_weight);
  std::string arch = backbone.config().architecture();  // "...ForCausalLM"
  arch = arch.substr(0, arch.size() - std::string("ForCausalLM").size()) + "ForSequenceClassification";
  o.config_updates = {{"architectures", {arch}},
                      {"id2label", {{"0", "LABEL_0"}}},
                      {"label2id", {{"LABEL_0", 0}}},
                      {"pad_token_id", pad_token_id}};
  save_model(backbone, config_text, dir, o);
}

}  // namespace grpo::model
