#include "model/causal_lm.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <ATen/core/ivalue.h>

#include <algorithm>
#include <functional>

#include "model/batch_invariant.h"
#include "model/deepseek.h"
#include "model/llama.h"
#include "model/token_logprobs.h"
#include "util/error.h"

namespace grpo::model {

namespace nn = torch::nn;

// ---------------------------------------------------------------------------------------------
DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, int64_t layer_idx, bool mtp) {
  if (c.mla())
    self_attn = register_module("self_attn", std::make_shared<MLAImpl>(c));
  else
    self_attn = register_module("self_attn", std::make_shared<GroupedQueryAttentionImpl>(c));
  if (c.is_moe_layer(layer_idx))
    moe = register_module("mlp", MoE(c));
  else
    dense_mlp = register_module("mlp", MLP(c.hidden_size, c.intermediate_size));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  if (mtp) {
    embed_tokens = register_module("embed_tokens", nn::Embedding(c.vocab_size, c.hidden_size));
    enorm = register_module("enorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
    hnorm = register_module("hnorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
    eh_proj = register_module("eh_proj", Linear(2 * c.hidden_size, c.hidden_size));
    shared_head = register_module("shared_head", std::make_shared<nn::Module>());
    shared_head_norm = shared_head->register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
    shared_head_head = shared_head->register_module("head", Linear(c.hidden_size, c.vocab_size));
  }
}

Tensor DecoderLayerImpl::feed_forward(const Tensor& x, RouterImpl::Routing* routing, const Tensor& replay) {
  return moe ? moe->forward(x, routing, replay) : dense_mlp(x);
}

Tensor DecoderLayerImpl::mtp_forward(const Tensor& previous, const Tensor& next_ids, const RopeTables& rope,
                                     const AttentionMask& mask, Tensor* cache_rows) {
  if (!eh_proj) throw Error("mtp_forward: this decoder layer is not an MTP module");
  Tensor x = eh_proj(at::cat({enorm(embed_tokens(next_ids)), hnorm(previous)}, -1));
  return forward(x, rope, mask, cache_rows);
}

Tensor DecoderLayerImpl::mtp_logits(const Tensor& h) { return shared_head_head(shared_head_norm(h)); }

Tensor DecoderLayerImpl::forward(const Tensor& x, const RopeTables& rope, const AttentionMask& mask, Tensor* cache_rows,
                                 RouterImpl::Routing* routing, const Tensor& replay) {
  Tensor h = x + self_attn->forward(input_layernorm(x), rope, mask, cache_rows);
  return h + feed_forward(post_attention_layernorm(h), routing, replay);
}

// ---------------------------------------------------------------------------------------------
DecoderModelImpl::DecoderModelImpl(const ModelConfig& c) {
  embed_tokens = register_module("embed_tokens", nn::Embedding(c.vocab_size, c.hidden_size));
  layers = register_module("layers", nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers + c.num_nextn_predict_layers; ++i)
    layers->push_back(DecoderLayer(c, i, /*mtp=*/i >= c.num_hidden_layers));
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

CausalLM::CausalLM(ModelConfig config) : config_(std::move(config)) {
  model = register_module("model", DecoderModel(config_));
  if (!config_.tie_word_embeddings) lm_head = register_module("lm_head", Linear(config_.hidden_size, config_.vocab_size));
  inv_freq_ = rope_inv_freq(config_);
}

at::Device CausalLM::device() const { return model->embed_tokens->weight.device(); }
at::ScalarType CausalLM::dtype() const { return model->embed_tokens->weight.scalar_type(); }

void CausalLM::to_device_dtype(at::Device device, at::ScalarType dtype) {
  // The router (gate weight and e_score_correction_bias) stays fp32 in every dtype, as
  // transformers' _keep_in_fp32_modules_strict and Megatron's fp32 router keep it: rounding the
  // gate weight to bf16 moves near-tied scores across the top-k boundary, which changes the
  // experts a token uses, not just the last digits. LoRA adapters stay fp32 too. Taken out before the cast, so that they never
  // pass through the narrower dtype.
  std::vector<std::pair<Tensor, Tensor>> fp32;  // (tensor, its fp32 value on `device`)
  for (auto& module : modules(/*include_self=*/false))
    if (auto* router = dynamic_cast<RouterImpl*>(module.get())) {
      for (auto& t : router->parameters(false)) fp32.emplace_back(t, t.detach().to(device, at::kFloat));
      for (auto& t : router->buffers(false)) fp32.emplace_back(t, t.detach().to(device, at::kFloat));
    } else if (auto* ex = dynamic_cast<RoutedExpertsImpl*>(module.get())) {
      for (auto* l : {&ex->gate_up_lora_A, &ex->gate_up_lora_B, &ex->down_lora_A, &ex->down_lora_B})
        if (l->defined()) fp32.emplace_back(*l, l->detach().to(device, at::kFloat));
    } else if (auto* lin = dynamic_cast<LinearImpl*>(module.get()); lin && lin->has_lora()) {
      // LoRA adapters stay fp32 (PEFT's autocast_adapter_dtype) over a base in any dtype.
      for (auto* l : {&lin->lora_A, &lin->lora_B}) fp32.emplace_back((*l)->weight, (*l)->weight.detach().to(device, at::kFloat));
    }
  this->to(device, dtype);
  for (auto& [t, value] : fp32) t.set_data(value);
}

RopeTables CausalLM::rope_tables(const Tensor& position_ids, at::ScalarType dtype) const {
  if (!inv_freq_device_.defined() || inv_freq_device_.device() != position_ids.device())
    inv_freq_device_ = inv_freq_.to(position_ids.device());
  const Tensor& inv = inv_freq_device_;
  Tensor freqs = position_ids.to(at::kFloat).unsqueeze(-1) * inv;  // (B, T, d/2)
  double factor = config_.rope_attention_factor();
  Tensor cos = (freqs.cos() * factor).to(dtype).unsqueeze(2);       // (B, T, 1, d/2)
  Tensor sin = (freqs.sin() * factor).to(dtype).unsqueeze(2);
  return {cos, sin};
}

Tensor CausalLM::hidden_states(const Tensor& input_ids, const std::optional<Tensor>& attention_mask,
                                          const std::optional<Tensor>& position_ids, std::vector<Tensor>* cache_rows,
                                          std::vector<RouterImpl::Routing>* routing, const std::vector<Tensor>* replay) {
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  const auto dev = device();
  Tensor ids = input_ids.to(dev);
  Tensor pos = position_ids ? position_ids->to(dev) : at::arange(T, at::TensorOptions().dtype(at::kLong).device(dev))
                                                          .unsqueeze(0).expand({B, T});
  AttentionMask mask;
  if (attention_mask) {
    Tensor valid = attention_mask->to(dev).to(at::kBool);                                  // (B, T)
    Tensor causal = at::ones({T, T}, at::TensorOptions().dtype(at::kBool).device(dev)).tril();
    Tensor allowed = causal.unsqueeze(0) & valid.unsqueeze(1);                             // (B, T, T)
    // A padding query may see nothing; let it see itself so softmax stays finite.
    allowed = allowed | at::eye(T, at::TensorOptions().dtype(at::kBool).device(dev)).unsqueeze(0);
    mask.allowed = allowed.unsqueeze(1);
  }
  return run_layers(ids, pos, mask, cache_rows, routing, replay);
}

namespace {

// One decoder layer as a checkpoint: the forward runs without a graph and keeps the layer's input;
// the backward runs the layer again with a graph and back-propagates through it (PyTorch's
// reentrant checkpoint), which accumulates the parameters' gradients and returns the input's.
struct LayerCall : torch::CustomClassHolder {
  std::function<Tensor(const Tensor&, RouterImpl::Routing*)> run;
  RouterImpl::Routing* routing = nullptr;  // filled by the first forward only
};

struct LayerCheckpoint : torch::autograd::Function<LayerCheckpoint> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, c10::intrusive_ptr<LayerCall> call) {
    Tensor y = call->run(x, call->routing);
    ctx->save_for_backward({x});
    ctx->saved_data["call"] = c10::IValue::make_capsule(std::move(call));
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    auto call = c10::static_intrusive_pointer_cast<LayerCall>(ctx->saved_data["call"].toCapsule());
    Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    Tensor y;
    {
      at::AutoGradMode on(true);
      y = call->run(x, nullptr);
    }
    torch::autograd::backward({y}, {grad[0]});
    return {x.grad(), Tensor()};
  }
};

// Returns `values` in the forward pass and hands the gradient to `differentiable` in the backward
// pass: the batch-invariant forward's log-probs with the ordinary forward's gradient.
struct TakeValues : torch::autograd::Function<TakeValues> {
  static Tensor forward(torch::autograd::AutogradContext*, const Tensor& differentiable, const Tensor& values) {
    return values.clone();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*, torch::autograd::variable_list grad) {
    return {grad[0], Tensor()};
  }
};

}  // namespace

Tensor CausalLM::run_layers(const Tensor& ids, const Tensor& pos, const AttentionMask& mask,
                                       std::vector<Tensor>* cache_rows, std::vector<RouterImpl::Routing>* routing,
                                       const std::vector<Tensor>* replay) {
  Tensor h = model->embed_tokens(ids);
  RopeTables rope = rope_tables(pos, h.scalar_type());
  if (cache_rows) cache_rows->assign(config_.num_hidden_layers, Tensor());
  if (routing) routing->clear();
  size_t moe_index = 0;
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    auto layer = model->layers[i]->as<DecoderLayer>();
    RouterImpl::Routing* r = nullptr;
    if (routing && layer->moe) r = &routing->emplace_back();
    Tensor imposed;
    if (replay && layer->moe) {
      if (moe_index >= replay->size()) throw Error("routing replay: fewer expert records than MoE layers");
      imposed = (*replay)[moe_index++];
    }
    if (gradient_checkpointing && at::GradMode::is_enabled() && !cache_rows) {
      auto call = c10::make_intrusive<LayerCall>();
      // The recomputation in the backward pass replays the same experts as the forward.
      call->run = [layer, rope, mask, imposed](const Tensor& x, RouterImpl::Routing* rr) {
        return layer->forward(x, rope, mask, nullptr, rr, imposed);
      };
      call->routing = r;
      // The input must take part in the graph even when nothing before it is trained (LoRA with a
      // frozen embedding), or no gradient would reach the layer's adapters.
      if (!h.requires_grad()) h = h.detach().requires_grad_(true);
      h = LayerCheckpoint::apply(h, call);
    } else {
      h = layer->forward(h, rope, mask, cache_rows ? &(*cache_rows)[i] : nullptr, r, imposed);
    }
  }
  return model->norm(h);
}

Tensor CausalLM::packed_target_logprobs(const Tensor& input_ids, const Tensor& segment_ids,
                                        const Tensor& position_ids, const Tensor& targets) {
  return packed_logprobs(input_ids, segment_ids, position_ids, targets, 0).logprobs;
}

CausalLM::PackedLogprobs CausalLM::packed_logprobs(const Tensor& input_ids, const Tensor& segment_ids,
                                                   const Tensor& position_ids, const Tensor& targets,
                                                   int64_t mtp_depths, bool mtp_detached) {
  const auto dev = device();
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  for (const Tensor* t : {&segment_ids, &position_ids, &targets})
    if (t->dim() != 2 || t->size(0) != B || t->size(1) != T)
      throw Error("packed_target_logprobs: segment_ids, position_ids and targets must be (B, T) like input_ids");
  Tensor seg = segment_ids.to(dev), ids = input_ids.to(dev), pos = position_ids.to(dev), all_tgt = targets.to(dev);
  Tensor causal = at::ones({T, T}, at::TensorOptions().dtype(at::kBool).device(dev)).tril();
  AttentionMask mask;
  mask.allowed = (causal.unsqueeze(0) & seg.unsqueeze(2).eq(seg.unsqueeze(1))).unsqueeze(1);  // (B, 1, T, T)
  Tensor h = run_layers(ids, pos, mask, nullptr, nullptr);
  PackedLogprobs out;
  auto select = [&](const Tensor& hidden, const Tensor& tgt2d, int64_t depth) {
    Tensor tgt = tgt2d.reshape({-1});
    Tensor rows = tgt.ge(0).nonzero().squeeze(1);
    Tensor hs = hidden.reshape({B * T, -1}).index_select(0, rows);
    return target_logprobs(hs, tgt.index_select(0, rows), nullptr, depth);
  };
  out.logprobs = select(h, all_tgt, 0);
  if (mtp_depths <= 0) return out;
  // Module k at position t embeds token t + k and predicts targets[t + k], both only within t's segment.
  std::vector<Tensor> next_ids, mtp_targets;
  for (int64_t k = 1; k <= mtp_depths; ++k) {
    // Past the row's end the shifted segment is -1, no segment's id: those places are masked too.
    Tensor other = shifted_left(seg, k, -1).ne(seg);
    next_ids.push_back(shifted_left(ids, k).masked_fill(other, 0));
    mtp_targets.push_back(shifted_left(all_tgt, k, -100).masked_fill(other, -100));
  }
  std::vector<Tensor> hk = run_mtp(h, next_ids, pos, mask, mtp_detached);
  for (int64_t k = 1; k <= mtp_depths; ++k) out.mtp.push_back(select(hk[k - 1], mtp_targets[k - 1], k));
  return out;
}

Tensor shifted_left(const Tensor& x, int64_t k, int64_t fill) {
  const int64_t T = x.size(1);
  Tensor out = at::full_like(x, fill);
  if (k < T) out.narrow(1, 0, T - k).copy_(x.narrow(1, k, T - k));
  return out;
}

DecoderLayerImpl& CausalLM::mtp_module(int64_t depth) {
  if (depth < 1 || depth > config_.num_nextn_predict_layers)
    throw Error("MTP depth " + std::to_string(depth) + " asked of a model with " +
                std::to_string(config_.num_nextn_predict_layers) + " MTP module(s) (num_nextn_predict_layers)");
  return *model->layers[config_.num_hidden_layers + depth - 1]->as<DecoderLayer>();
}

std::vector<Tensor> CausalLM::run_mtp(const Tensor& h, const std::vector<Tensor>& next_ids, const Tensor& pos,
                                      const AttentionMask& mask, bool detached) {
  RopeTables rope = rope_tables(pos, h.scalar_type());
  std::vector<Tensor> out;
  Tensor previous = detached ? h.detach() : h;
  for (size_t k = 1; k <= next_ids.size(); ++k) {
    previous = mtp_module((int64_t)k).mtp_forward(previous, next_ids[k - 1], rope, mask);
    out.push_back(previous);
  }
  return out;
}

Tensor CausalLM::target_logprobs(const Tensor& hs, const Tensor& tgt, Tensor* entropy, int64_t mtp_depth) {
  // The output head's: its logits never all held, in the forward or the backward.
  if (mtp_depth == 0) return token_logprobs(hs, lm_head_weight(), tgt, entropy);
  DecoderLayerImpl* mtp = &mtp_module(mtp_depth);
  const LinearImpl& head = *mtp->shared_head_head;
  if (!head.bias.defined() && !(head.has_lora() && head.lora_enabled) && !(head.fp8.defined() && fp8::active()))
    return token_logprobs(mtp->shared_head_norm(hs), head.weight, tgt, entropy);  // a plain product: the same bits
  // An adapted (or biased, or FP8) head: its logits a chunk at a time, kept by autograd for the backward.
  const int64_t V = config_.vocab_size, M = hs.size(0);
  const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 27) / (4 * V));
  std::vector<Tensor> lp, ent;
  for (int64_t s = 0; s < M; s += chunk) {
    int64_t n = std::min(chunk, M - s);
    Tensor lg = mtp->mtp_logits(hs.narrow(0, s, n)).to(at::kFloat);
    Tensor lse = lg.logsumexp(-1);
    lp.push_back(lg.gather(1, tgt.narrow(0, s, n).unsqueeze(1)).squeeze(1) - lse);
    if (entropy) {  // H = logsumexp - sum softmax * logits
      at::NoGradGuard no_grad;
      ent.push_back(lse - (lg.softmax(-1) * lg).sum(-1));
    }
  }
  auto empty = at::empty({0}, at::TensorOptions().dtype(at::kFloat).device(hs.device()));
  if (entropy) *entropy = ent.empty() ? empty : at::cat(ent, 0);
  return lp.empty() ? empty : at::cat(lp, 0);
}

int64_t CausalLM::num_moe_layers() const {
  int64_t n = 0;
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) n += config_.is_moe_layer(i) ? 1 : 0;
  return n;
}

Tensor CausalLM::lm_head_weight() { return lm_head ? lm_head->weight : model->embed_tokens->weight; }

Tensor CausalLM::logits(const Tensor& hidden) { return at::linear(hidden, lm_head_weight()); }

std::vector<Tensor> CausalLM::completion_logprobs(const std::vector<std::vector<int64_t>>& prompts,
                                                             const std::vector<std::vector<int64_t>>& completions) {
  return completion_forward(prompts, completions, {}).logprobs;
}

std::vector<Tensor> CausalLM::replay_tensors(const std::vector<const std::vector<int16_t>*>& records,
                                             const std::vector<std::vector<int64_t>>& prompts,
                                             const std::vector<std::vector<int64_t>>& completions, int64_t T) {
  const int64_t B = (int64_t)prompts.size();
  if (records.empty()) return {};
  if ((int64_t)records.size() != B)
    throw Error("routing replay: " + std::to_string(records.size()) + " expert records for " + std::to_string(B) + " sequences");
  const int64_t moe_layers = num_moe_layers();
  const int64_t k = config_.num_experts_per_tok, E = config_.n_routed_experts;
  if (moe_layers == 0) throw Error("routing replay: the model has no MoE layer");
  // (MoE layers, B*T, k); padding tokens take expert 0 (their outputs reach no real token).
  std::vector<int64_t> buf(moe_layers * B * T * k, 0);
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<int16_t>* r = records[b];
    const int64_t len = (int64_t)prompts[b].size() + std::max<int64_t>(0, (int64_t)completions[b].size() - 1);
    if (!r || (int64_t)r->size() != len * moe_layers * k)
      throw Error("routing replay: sequence " + std::to_string(b) + " has " + (r ? std::to_string(r->size()) : "no") +
                  " recorded expert indices, expected " + std::to_string(len) + " tokens x " + std::to_string(moe_layers) +
                  " MoE layers x " + std::to_string(k));
    for (int64_t t = 0; t < len; ++t)
      for (int64_t l = 0; l < moe_layers; ++l)
        for (int64_t j = 0; j < k; ++j) {
          const int64_t e = (*r)[(t * moe_layers + l) * k + j];
          if (e < 0 || e >= E)
            throw Error("routing replay: sequence " + std::to_string(b) + " names expert " + std::to_string(e) +
                        " of " + std::to_string(E));
          buf[((l * B + b) * T + t) * k + j] = e;
        }
  }
  Tensor all = at::from_blob(buf.data(), {moe_layers, B * T, k}, at::TensorOptions().dtype(at::kLong)).to(device());
  if (all.device().is_cpu()) all = all.clone();  // from_blob over buf, which goes away
  std::vector<Tensor> out;
  for (int64_t l = 0; l < moe_layers; ++l) out.push_back(all[l]);
  return out;
}

CausalLM::CompletionOutputs CausalLM::completion_forward(
    const std::vector<std::vector<int64_t>>& prompts, const std::vector<std::vector<int64_t>>& completions,
    const CompletionOptions& options) {
  if (prompts.size() != completions.size()) throw Error("completion_logprobs: prompts and completions differ in count");
  const int64_t B = static_cast<int64_t>(prompts.size());
  CompletionOutputs result;
  result.logprobs.resize(B);
  if (options.entropy) result.entropy.resize(B);
  if (B == 0) return result;
  // Sequence b is prompt + completion[:-1] (the last completion token is never an input).
  int64_t T = 1;
  for (int64_t b = 0; b < B; ++b) {
    if (prompts[b].empty()) throw Error("completion_logprobs: sequence " + std::to_string(b) + " has an empty prompt");
    int64_t len = (int64_t)prompts[b].size() + std::max<int64_t>(0, (int64_t)completions[b].size() - 1);
    T = std::max(T, len);
  }
  const int64_t V = config_.vocab_size;
  std::vector<int64_t> ids(B * T, 0), rows, targets;
  std::vector<float> real(B * T, 0.f);  // 1 for the tokens of each sequence, 0 for padding
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[b];
    const auto& c = completions[b];
    int64_t t = 0;
    for (int64_t tok : p) ids[b * T + t++] = tok;
    for (size_t j = 0; j + 1 < c.size(); ++j) ids[b * T + t++] = c[j];
    std::fill(real.begin() + b * T, real.begin() + b * T + t, 1.f);
    for (size_t j = 0; j < c.size(); ++j) {
      rows.push_back(b * T + (int64_t)p.size() - 1 + (int64_t)j);  // position predicting c[j]
      targets.push_back(c[j]);
    }
    for (int64_t tok : p)
      if (tok < 0 || tok >= V) throw Error("completion_logprobs: prompt token id " + std::to_string(tok) + " of sequence " + std::to_string(b) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
    for (int64_t tok : c)
      if (tok < 0 || tok >= V) throw Error("completion_logprobs: completion token id " + std::to_string(tok) + " of sequence " + std::to_string(b) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
  }
  const auto dev = device();
  auto long_opts = at::TensorOptions().dtype(at::kLong);
  // Copies (not views of the vectors): autograd keeps index tensors for the backward pass.
  Tensor input = at::from_blob(ids.data(), {B, T}, long_opts).clone().to(dev);
  std::vector<Tensor> replay = replay_tensors(options.replay_experts, prompts, completions, T);
  invariant::CompletionValues exact;
  const bool values_known = batch_invariant && !options.invariant_logprobs.empty();
  if (values_known) {  // the engine's values and routing stand in for the batch-invariant forward
    if ((int64_t)options.invariant_logprobs.size() != B)
      throw Error("completion_logprobs: " + std::to_string(options.invariant_logprobs.size()) +
                  " sequences of known log-probs for " + std::to_string(B) + " sequences");
    for (int64_t b = 0; b < B; ++b)
      if (options.invariant_logprobs[b].numel() != (int64_t)completions[b].size())
        throw Error("completion_logprobs: sequence " + std::to_string(b) + " has " +
                    std::to_string(options.invariant_logprobs[b].numel()) + " known log-probs for " +
                    std::to_string(completions[b].size()) + " completion tokens");
    if (replay.empty() && num_moe_layers() > 0)
      throw Error("completion_logprobs: known batch-invariant log-probs need the routing records they came with");
    exact.logprobs = at::cat(options.invariant_logprobs).to(at::kFloat);
  } else if (batch_invariant) {
    if (!replay.empty())
      throw Error("completion_logprobs: routing replay is redundant with the batch-invariant forward, which routes as the rollout did");
    exact = invariant::completion_logprobs(*this, prompts, completions);
  }
  if (batch_invariant) {
    if (!at::GradMode::is_enabled() && !options.entropy && !options.routing && options.mtp_depths == 0) {
      int64_t offset = 0;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t n = (int64_t)completions[b].size();
        result.logprobs[b] = exact.logprobs.narrow(0, offset, n);
        offset += n;
      }
      result.token_mask = at::from_blob(real.data(), {B, T}, at::TensorOptions().dtype(at::kFloat)).clone().to(dev);
      return result;
    }
    // The gradient's forward uses the experts that the values' forward chose (with known values,
    // the routing records already in `replay`).
    if (!exact.experts.empty()) {
      std::vector<int64_t> token_rows;
      for (int64_t i = 0; i < B * T; ++i)
        if (real[i] != 0.f) token_rows.push_back(i);
      Tensor at_rows = at::tensor(token_rows, long_opts).to(dev);
      for (const Tensor& e : exact.experts)
        replay.push_back(at::zeros({B * T, e.size(1)}, long_opts.device(dev)).index_copy_(0, at_rows, e.to(dev)));
    }
  }
  // Right padding: plain causal attention is exact.
  Tensor h = hidden_states(input, std::nullopt, std::nullopt, nullptr, options.routing ? &result.routing : nullptr,
                           replay.empty() ? nullptr : &replay);
  result.token_mask = at::from_blob(real.data(), {B, T}, at::TensorOptions().dtype(at::kFloat)).clone().to(dev);
  std::vector<Tensor> flat_lp, flat_entropy;
  if (!rows.empty()) {
    Tensor row_idx = at::from_blob(rows.data(), {(int64_t)rows.size()}, long_opts).clone().to(dev);
    Tensor tgt = at::from_blob(targets.data(), {(int64_t)targets.size()}, long_opts).clone().to(dev);
    Tensor ent;
    flat_lp.push_back(target_logprobs(h.reshape({B * T, -1}).index_select(0, row_idx), tgt, options.entropy ? &ent : nullptr));
    if (batch_invariant) flat_lp.back() = TakeValues::apply(flat_lp.back(), exact.logprobs.to(dev));
    if (options.entropy) flat_entropy.push_back(ent);
  }
  // Splits the flat per-token values back into sequences.
  auto per_sequence = [&](const std::vector<Tensor>& flat, std::vector<Tensor>& out) {
    Tensor all = flat.empty() ? Tensor() : at::cat(flat, 0);
    int64_t offset = 0;
    for (int64_t b = 0; b < B; ++b) {
      int64_t n = (int64_t)completions[b].size();
      out[b] = n ? all.narrow(0, offset, n) : at::empty({0}, at::TensorOptions().dtype(at::kFloat).device(dev));
      offset += n;
    }
  };
  per_sequence(flat_lp, result.logprobs);
  if (options.entropy) per_sequence(flat_entropy, result.entropy);
  if (options.mtp_depths > 0) result.mtp_logprobs = completion_mtp_logprobs(h, input, prompts, completions, options);
  return result;
}

std::vector<std::vector<Tensor>> CausalLM::completion_mtp_logprobs(
    const Tensor& h, const Tensor& input, const std::vector<std::vector<int64_t>>& prompts,
    const std::vector<std::vector<int64_t>>& completions, const CompletionOptions& options) {
  const int64_t B = input.size(0), T = input.size(1), D = options.mtp_depths;
  const auto dev = h.device();
  auto long_opts = at::TensorOptions().dtype(at::kLong);
  // Module k at position t embeds the token at t + k: the right-padded inputs shifted left by k.
  std::vector<Tensor> next_ids;
  for (int64_t k = 1; k <= D; ++k) next_ids.push_back(shifted_left(input, k));
  Tensor pos = at::arange(T, long_opts.device(dev)).unsqueeze(0).expand({B, T});
  std::vector<Tensor> hk = run_mtp(h, next_ids, pos, AttentionMask{}, options.mtp_detached);
  std::vector<std::vector<Tensor>> out(D, std::vector<Tensor>(B));
  for (int64_t k = 1; k <= D; ++k) {
    // Completion token j (position P + j of prompt + completion) from position P + j - k - 1.
    std::vector<int64_t> rows, targets, counts;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t P = (int64_t)prompts[b].size(), C = (int64_t)completions[b].size();
      const int64_t first = std::max<int64_t>(0, k + 1 - P);
      for (int64_t j = first; j < C; ++j) {
        rows.push_back(b * T + P + j - k - 1);
        targets.push_back(completions[b][j]);
      }
      counts.push_back(std::max<int64_t>(0, C - first));
    }
    Tensor lp = at::empty({0}, at::TensorOptions().dtype(at::kFloat).device(dev));
    if (!rows.empty()) {
      Tensor row_idx = at::tensor(rows, long_opts).to(dev), tgt = at::tensor(targets, long_opts).to(dev);
      lp = target_logprobs(hk[k - 1].reshape({B * T, -1}).index_select(0, row_idx), tgt, nullptr, k);
    }
    int64_t offset = 0;
    for (int64_t b = 0; b < B; ++b) {
      out[k - 1][b] = lp.narrow(0, offset, counts[b]);
      offset += counts[b];
    }
  }
  return out;
}

}  // namespace grpo::model
