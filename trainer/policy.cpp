#include "trainer/policy.h"

#include <c10/core/GradMode.h>

#include <cmath>
#include <filesystem>

#include "model/checkpoint.h"
#include "util/error.h"
#include "util/files.h"

namespace grpo::trainer {

using Model = model::CausalLM;

std::shared_ptr<Model> load_base_model(const StageSettings& s, const std::string& config_text, at::ScalarType dtype,
                                       bool without_lm_head) {
  const at::Device device(s.model.device);
  if (!s.model.model_dir.empty()) return model::load_model(s.model.model_dir, {dtype, device, without_lm_head});
  ModelConfig config = parse_model_config(config_text, s.model.model_config);
  if (without_lm_head) config.tie_word_embeddings = true;
  auto m = std::make_shared<Model>(config);
  model::init_weights(*m, s.model.model_seed);
  m->to_device_dtype(device, dtype);
  return m;
}

namespace {

// lora_r > 0: the frozen base (from model_dir, or continuing an adapter that model_dir holds) with
// adapters in fp32.
// `base_dir`: the base directory of the adapter model_dir holds ("" when it holds none).
void setup_lora(Policy& p, const StageSettings& s, const std::string& recipe_path, const std::string& base_dir) {
  const ModelSettings& m = s.model;
  p.lora.r = m.lora_r;
  p.lora.alpha = m.lora_alpha;
  p.lora.dropout = m.lora_dropout;
  p.lora.target_modules = m.lora_target_modules;
  p.lora.use_rslora = m.use_rslora;
  p.save_merged = m.lora_save_merged;
  const at::ScalarType dtype = m.bf16 ? at::kBFloat16 : at::kFloat;
  if (!base_dir.empty()) {  // train the adapter further (PEFT's is_trainable=True), over its own base
    model::LoraConfig had = model::read_adapter_config(m.model_dir);
    if (had.r != p.lora.r)
      throw Error(recipe_path + ": stage '" + s.name + "': model_dir " + m.model_dir + " is a LoRA adapter of rank " +
                  std::to_string(had.r) + ", but lora_r is " + std::to_string(p.lora.r));
    p.lora = had;
    p.master = model::load_model(m.model_dir, {dtype, at::Device(m.device)});
    p.adapter_base = base_dir;
  } else {
    p.master = load_base_model(s, p.config_text, dtype);
    if (!m.model_dir.empty()) p.adapter_base = std::filesystem::absolute(m.model_dir).lexically_normal().string();
    model::add_lora(*p.master, p.lora, m.model_seed + 1);
  }
  for (auto& t : p.master->parameters()) t.set_requires_grad(false);
  for (auto& [name, t] : model::lora_parameters(*p.master)) t.set_requires_grad(true);
  p.compute = p.master;
}

}  // namespace

std::shared_ptr<model::CausalLM> Policy::replica(const at::Device& device) const {
  auto m = std::make_shared<Model>(compute->config());
  m->to_device_dtype(device, compute->dtype());
  if (has_lora()) model::add_lora(*m, lora, 0);
  model::copy_weights(*m, *compute);
  m->batch_invariant = compute->batch_invariant;
  for (auto& p : m->parameters()) p.set_requires_grad(false);
  return m;
}

Policy load_policy(const StageSettings& s, const std::string& recipe_path, bool without_lm_head) {
  Policy p;
  std::string base_dir;  // the base of an adapter in model_dir
  if (!s.model.model_dir.empty() && model::is_adapter_dir(s.model.model_dir)) {
    std::string base;
    model::read_adapter_config(s.model.model_dir, &base);
    base_dir = model::resolve_adapter_base(s.model.model_dir, base);
  }
  p.config_text = read_file(s.model.model_dir.empty() ? s.model.model_config
                                                      : (base_dir.empty() ? s.model.model_dir : base_dir) + "/config.json");
  if (s.model.lora_r > 0) {
    setup_lora(p, s, recipe_path, base_dir);
  } else {
    // A full model, or an adapter merged into its base (full fine-tuning from a LoRA stage).
    p.master = load_base_model(s, p.config_text, at::kFloat, without_lm_head);
    if (model::has_lora(*p.master)) p.master = model::merged_copy(*p.master);
  }
  p.compute = p.master;
  if (s.model.bf16 && !p.has_lora()) {
    p.compute = std::make_shared<Model>(p.master->config());
    p.compute->to_device_dtype(at::Device(s.model.device), at::kBFloat16);
    p.sync();
  }
  p.compute->gradient_checkpointing = s.model.gradient_checkpointing;
  p.compute->batch_invariant = s.rollout.exact_rollout;
  if (s.model.tokenizer == "builtin:bytes")
    p.tok = std::make_shared<const text::Tokenizer>(text::Tokenizer::byte_level());
  else
    p.tok = std::make_shared<const text::Tokenizer>(
        text::Tokenizer::load(s.model.tokenizer.empty() ? s.model.model_dir + "/tokenizer.json" : s.model.tokenizer));
  const auto& mc = p.master->config();
  if (s.model.mtp_loss_weight > 0 && mc.num_nextn_predict_layers == 0)
    throw Error(recipe_path + ": stage '" + s.name + "': mtp_loss_weight: the model has no MTP module " +
                "(num_nextn_predict_layers is 0, or its checkpoint holds none)");
  if (auto id = p.tok->token_to_id("</s>")) p.eos = *id;
  if (mc.eos_token_id) p.eos = *mc.eos_token_id;
  if (p.eos < 0 || p.eos >= mc.vocab_size) throw Error(recipe_path + ": no usable eos token id (set eos_token_id)");
  const int64_t bos = mc.bos_token_id ? *mc.bos_token_id : p.tok->token_to_id("<s>").value_or(-1);
  p.hub = hub_files(s.model, bos, p.eos, bos >= 0 ? p.tok->id_to_token((int32_t)bos).value_or("") : "",
                    p.tok->id_to_token((int32_t)p.eos).value_or(""), mc.max_position_embeddings);
  std::string jinja_where = "chat_template.jinja of " + (s.model.model_dir.empty() ? s.model.tokenizer : s.model.model_dir);
  if (!s.data.chat_template.empty()) {
    jinja_where = s.data.chat_template;
    p.hub.chat_template = read_file(s.data.chat_template);
    if (p.hub.chat_template.empty()) throw Error(recipe_path + ": key 'chat_template': " + s.data.chat_template + " is empty");
  }
  if (s.data.prompt_format == "chat") {
    auto t = text::ChatTemplate::from_config(nlohmann::ordered_json::parse(p.hub.tokenizer_config.dump()), "tokenizer_config.json",
                                             p.hub.chat_template, jinja_where);
    if (!t)
      throw Error(recipe_path + ": stage '" + s.name + "': prompt_format chat, but the model has no chat template " +
                  "(give data key chat_template: FILE.jinja)");
    p.chat = std::make_shared<const text::ChatTemplate>(std::move(*t));
  }
  return p;
}

std::vector<int64_t> Policy::encode(const std::string& text, bool special_tokens) const {
  std::vector<int64_t> ids;
  for (int32_t t : tok->encode(text, special_tokens)) ids.push_back(t);
  return ids;
}

void Policy::accumulate_gradients() {
  if (compute == master) return;
  c10::NoGradGuard g;
  auto m = master->parameters(), c = compute->parameters();
  if (master_sharded() && held_grads.size() != m.size()) held_grads.resize(m.size());
  for (size_t i = 0; i < m.size(); ++i) {
    at::Tensor& grad = c[i].mutable_grad();
    if (!grad.defined()) continue;
    at::Tensor& into = master_sharded() ? held_grads[i] : m[i].mutable_grad();
    if (into.defined()) into.add_(grad.to(at::kFloat));
    else into = grad.to(at::kFloat);
    grad = at::Tensor();
  }
}

void Policy::shard_master(const std::vector<bool>& owned) {
  if (compute == master || has_lora()) throw Error("shard_master: only a full model with a bf16 compute copy has an fp32 master to shard");
  auto m = master->parameters();
  if (owned.size() != m.size()) throw Error("shard_master: ownership of " + std::to_string(owned.size()) + " tensors for " + std::to_string(m.size()) + " parameters");
  c10::NoGradGuard g;
  for (size_t i = 0; i < m.size(); ++i)
    if (!owned[i]) {
      m[i].set_data(at::empty({0}, m[i].options()));
      m[i].mutable_grad() = at::Tensor();
    }
  mine = owned;
}

std::pair<int64_t, int64_t> Policy::master_bytes() const {
  int64_t held = 0, all = 0;
  auto m = master->parameters(), c = compute->parameters();
  for (size_t i = 0; i < m.size(); ++i) {
    held += m[i].numel() * 4;
    all += c[i].numel() * 4;
  }
  return {held, all};
}

std::vector<at::Tensor> Policy::trainable_parameters() const {
  if (!has_lora()) return master->parameters();
  std::vector<at::Tensor> out;
  for (auto& [name, t] : model::lora_parameters(*master)) out.push_back(t);
  return out;
}

void Policy::save_weights(const std::string& dir, bool bf16_copy) const {
  if (has_lora()) {
    std::string base = adapter_base;
    if (base.empty()) {
      // A random base has no directory of its own: the stage keeps one copy beside its checkpoints.
      const std::string base_dir = std::filesystem::path(dir).parent_path().string() + "/base";
      if (!std::filesystem::exists(base_dir + "/config.json")) {
        model::AdaptersDisabled off(*master);
        model::save_model(*master, config_text, base_dir, {at::kFloat});
        write_hub_files(hub, base_dir);
      }
      base = "../base";
    }
    model::save_adapter(*master, lora, base, dir);
    write_hub_files(hub, dir);
    if (save_merged) {
      model::save_model(*master, config_text, dir + "/merged", {bf16_copy ? at::kBFloat16 : at::kFloat});
      write_hub_files(hub, dir + "/merged");
    }
    return;
  }
  model::save_model(*master, config_text, dir, {at::kFloat});
  write_hub_files(hub, dir);
  if (bf16_copy) {
    model::save_model(*master, config_text, dir + "/bf16", {at::kBFloat16});
    write_hub_files(hub, dir + "/bf16");
  }
}

void Policy::sync() {
  if (compute == master) return;
  if (!master_sharded()) return model::copy_weights(*compute, *master);
  c10::NoGradGuard g;
  auto m = master->parameters(), c = compute->parameters();
  for (size_t i = 0; i < m.size(); ++i)
    if (mine[i]) c[i].copy_(m[i]);
  auto mb = master->buffers(), cb = compute->buffers();
  for (size_t i = 0; i < mb.size(); ++i) cb[i].copy_(mb[i]);
}

double scheduled_learning_rate(const OptimSettings& o, int64_t step, int64_t total_steps) {
  const int64_t warmup = (int64_t)std::ceil(o.warmup_ratio * total_steps);
  if (step <= warmup) return o.learning_rate * step / warmup;
  if (o.lr_scheduler_type == LrScheduler::Cosine)
    return o.learning_rate * 0.5 *
           (1 + std::cos(M_PI * (double)(step - warmup) / std::max<int64_t>(1, total_steps - warmup)));
  return o.learning_rate;
}

}  // namespace grpo::trainer
