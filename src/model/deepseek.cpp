#include "model/deepseek.h"

#include <ATen/ops/_grouped_mm.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <ATen/core/ivalue.h>
#include <torch/nn/options/linear.h>

#include <cmath>
#include <functional>
#include <cstdlib>
#include <limits>

#include "util/error.h"

namespace grpo::model {

namespace nn = torch::nn;

namespace {
Linear linear(int64_t in, int64_t out) { return Linear(in, out); }
}  // namespace

// ---------------------------------------------------------------------------------------------
RMSNormImpl::RMSNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
}

Tensor RMSNormImpl::forward(const Tensor& x) {
  auto xf = x.to(at::kFloat);
  auto variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * at::rsqrt(variance + eps);
  return weight * xf.to(x.scalar_type());
}

// ---------------------------------------------------------------------------------------------
MLPImpl::MLPImpl(int64_t hidden, int64_t intermediate) {
  gate_proj = register_module("gate_proj", linear(hidden, intermediate));
  up_proj = register_module("up_proj", linear(hidden, intermediate));
  down_proj = register_module("down_proj", linear(intermediate, hidden));
}

Tensor MLPImpl::forward(const Tensor& x) { return down_proj(at::silu(gate_proj(x)) * up_proj(x)); }

// ---------------------------------------------------------------------------------------------
Tensor rope_inv_freq(const ModelConfig& c) {
  const int64_t dim = c.qk_rope_head_dim;
  auto opts = at::TensorOptions().dtype(at::kFloat);
  // base ** (arange(0, dim, 2) / dim), in fp32 as transformers does.
  Tensor pos_freqs = at::pow(c.rope_theta, at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim));
  Tensor extrapolation = 1.0 / pos_freqs;
  if (!c.yarn) return extrapolation;
  const YarnScaling& y = *c.yarn;
  Tensor interpolation = 1.0 / (y.factor * pos_freqs);
  auto correction_dim = [&](double rotations) {
    return (dim * std::log(y.original_max_position_embeddings / (rotations * 2 * M_PI))) / (2 * std::log(c.rope_theta));
  };
  double low = correction_dim(y.beta_fast), high = correction_dim(y.beta_slow);
  if (y.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // avoid a zero-width ramp
  Tensor ramp = ((at::arange(dim / 2, opts) - low) / (high - low)).clamp(0, 1);
  Tensor extrapolation_factor = 1 - ramp;
  return interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
}

Tensor apply_rope(const Tensor& x, const RopeTables& rope, bool interleave) {
  const int64_t d = x.size(-1);
  Tensor x1, x2;
  if (interleave) {
    x1 = x.slice(-1, 0, d, 2);
    x2 = x.slice(-1, 1, d, 2);
  } else {
    x1 = x.narrow(-1, 0, d / 2);
    x2 = x.narrow(-1, d / 2, d / 2);
  }
  return at::cat({x1 * rope.cos - x2 * rope.sin, x2 * rope.cos + x1 * rope.sin}, -1);
}

// ---------------------------------------------------------------------------------------------
MLAImpl::MLAImpl(const ModelConfig& c)
    : num_heads(c.num_attention_heads),
      qk_nope_head_dim(c.qk_nope_head_dim),
      qk_rope_head_dim(c.qk_rope_head_dim),
      v_head_dim(c.v_head_dim),
      kv_lora_rank(c.kv_lora_rank),
      softmax_scale(c.softmax_scale()),
      rope_interleave(c.rope_interleave) {
  const int64_t H = c.hidden_size, q_dim = num_heads * c.qk_head_dim();
  if (c.q_lora_rank) {
    q_a_proj = register_module("q_a_proj", linear(H, *c.q_lora_rank));
    q_a_layernorm = register_module("q_a_layernorm", RMSNorm(*c.q_lora_rank, c.rms_norm_eps));
    q_b_proj = register_module("q_b_proj", linear(*c.q_lora_rank, q_dim));
  } else {
    q_proj = register_module("q_proj", linear(H, q_dim));
  }
  kv_a_proj_with_mqa = register_module("kv_a_proj_with_mqa", linear(H, kv_lora_rank + qk_rope_head_dim));
  kv_a_layernorm = register_module("kv_a_layernorm", RMSNorm(kv_lora_rank, c.rms_norm_eps));
  kv_b_proj = register_module("kv_b_proj", linear(kv_lora_rank, num_heads * (qk_nope_head_dim + v_head_dim)));
  o_proj = register_module("o_proj", linear(num_heads * v_head_dim, H));
}

Tensor MLAImpl::forward(const Tensor& x, const RopeTables& rope, const AttentionMask& mask, Tensor* latent) {
  const int64_t B = x.size(0), T = x.size(1);
  Tensor q = q_proj ? q_proj(x) : q_b_proj(q_a_layernorm(q_a_proj(x)));
  q = q.view({B, T, num_heads, qk_nope_head_dim + qk_rope_head_dim});
  Tensor q_nope = q.narrow(-1, 0, qk_nope_head_dim);
  Tensor q_pe = apply_rope(q.narrow(-1, qk_nope_head_dim, qk_rope_head_dim), rope, rope_interleave);

  Tensor compressed = kv_a_proj_with_mqa(x);  // (B, T, kv_lora_rank + rope_dim)
  Tensor kv_latent = kv_a_layernorm(compressed.narrow(-1, 0, kv_lora_rank));
  Tensor k_pe = compressed.narrow(-1, kv_lora_rank, qk_rope_head_dim).view({B, T, 1, qk_rope_head_dim});
  k_pe = apply_rope(k_pe, rope, rope_interleave);
  if (latent) *latent = at::cat({kv_latent, k_pe.view({B, T, qk_rope_head_dim})}, -1);

  Tensor kv = kv_b_proj(kv_latent).view({B, T, num_heads, qk_nope_head_dim + v_head_dim});
  Tensor k_nope = kv.narrow(-1, 0, qk_nope_head_dim);
  Tensor v = kv.narrow(-1, qk_nope_head_dim, v_head_dim);

  Tensor query = at::cat({q_nope, q_pe}, -1).transpose(1, 2);  // (B, nh, T, dq)
  Tensor key = at::cat({k_nope, k_pe.expand({B, T, num_heads, qk_rope_head_dim})}, -1).transpose(1, 2);
  Tensor value = v.transpose(1, 2);  // (B, nh, T, dv)
  Tensor out = mask.allowed
                   ? at::scaled_dot_product_attention(query, key, value, *mask.allowed, 0.0, false, softmax_scale)
                   : at::scaled_dot_product_attention(query, key, value, {}, 0.0, true, softmax_scale);
  out = out.transpose(1, 2).reshape({B, T, num_heads * v_head_dim});
  return o_proj(out);
}

Tensor MLAImpl::decode_absorbed(const Tensor& x, const RopeTables& rope, Tensor cache, const Tensor& write_slots,
                              const Tensor& gather_idx, const Tensor& invalid, int64_t Lpad) {
  const int64_t B = x.size(0), nh = num_heads, dn = qk_nope_head_dim, dr = qk_rope_head_dim,
                dv = v_head_dim, r = kv_lora_rank, D = r + dr;
  Tensor q = q_proj ? q_proj(x) : q_b_proj(q_a_layernorm(q_a_proj(x)));
  q = q.view({B, nh, dn + dr});
  Tensor q_pe = apply_rope(q.narrow(-1, dn, dr).unsqueeze(1), rope, rope_interleave).squeeze(1);
  Tensor comp = kv_a_proj_with_mqa(x);  // (B, r + dr)
  Tensor lat = kv_a_layernorm(comp.narrow(-1, 0, r));
  Tensor kpe = apply_rope(comp.narrow(-1, r, dr).view({B, 1, 1, dr}), rope, rope_interleave).view({B, dr});
  cache.index_copy_(0, write_slots, at::cat({lat, kpe}, -1));
  // Absorbed form: scores = [q_nope W_uk | q_pe] . [latent | k_pe]; out = (p . latent) W_uv^T.
  Tensor w = kv_b_proj->effective_weight().view({nh, dn + dv, r});
  Tensor q_lat = at::bmm(q.narrow(-1, 0, dn).transpose(0, 1), w.narrow(1, 0, dn)).transpose(0, 1);  // (B, nh, r)
  Tensor qc = at::cat({q_lat, q_pe}, -1);                                                            // (B, nh, D)
  Tensor kv = cache.index_select(0, gather_idx).view({B, Lpad, D});
  Tensor scores = at::bmm(qc, kv.transpose(1, 2)).to(at::kFloat) * softmax_scale;  // (B, nh, Lpad)
  Tensor probs = scores.masked_fill(invalid, -std::numeric_limits<float>::infinity()).softmax(-1).to(x.scalar_type());
  Tensor o_lat = at::bmm(probs, kv.narrow(-1, 0, r));                                              // (B, nh, r)
  Tensor o = at::bmm(o_lat.transpose(0, 1), w.narrow(1, dn, dv).transpose(1, 2)).transpose(0, 1);  // (B, nh, dv)
  return o_proj(o.reshape({B, nh * dv}));
}

// ---------------------------------------------------------------------------------------------
RouterImpl::RouterImpl(const ModelConfig& c) : config(c) {
  weight = register_parameter("weight", torch::empty({c.n_routed_experts, c.hidden_size}));
  if (c.topk_method == TopkMethod::NoauxTc)
    e_score_correction_bias = register_buffer("e_score_correction_bias", torch::zeros({c.n_routed_experts}));
}

RouterImpl::Routing RouterImpl::forward(const Tensor& x) {
  const ModelConfig& c = config;
  const int64_t N = x.size(0), E = c.n_routed_experts, k = c.num_experts_per_tok;
  // Gate logits in fp32 whatever the model dtype.
  Tensor logits = at::linear(x.to(at::kFloat), weight.to(at::kFloat));
  Tensor scores = c.scoring_func == ScoringFunc::Softmax ? logits.softmax(-1) : logits.sigmoid();
  Tensor choice = c.topk_method == TopkMethod::NoauxTc ? scores + e_score_correction_bias : scores;
  if (c.topk_method != TopkMethod::Greedy && c.n_group > 1) {
    Tensor grouped = choice.view({N, c.n_group, E / c.n_group});
    // A group's score: its best expert (V2) or the sum of its best two (V3, noaux_tc).
    Tensor group_scores = c.topk_method == TopkMethod::NoauxTc
                              ? std::get<0>(grouped.topk(2, -1)).sum(-1)
                              : std::get<0>(grouped.max(-1));
    Tensor group_idx = std::get<1>(group_scores.topk(c.topk_group, -1, true, false));
    Tensor group_mask = at::zeros_like(group_scores, at::kBool).scatter_(1, group_idx, true);
    Tensor expert_mask = group_mask.unsqueeze(-1).expand({N, c.n_group, E / c.n_group}).reshape({N, E});
    choice = choice.masked_fill(expert_mask.logical_not(), -std::numeric_limits<float>::infinity());
  }
  Tensor idx = std::get<1>(choice.topk(k, -1, true, false));
  Tensor w = scores.gather(1, idx);
  if (c.norm_topk_prob) w = w / (w.sum(-1, true) + 1e-20);
  w = w * c.routed_scaling_factor;
  return {idx, w, scores};
}

// ---------------------------------------------------------------------------------------------
RoutedExpertsImpl::RoutedExpertsImpl(int64_t E, int64_t H, int64_t I) : num_experts(E), intermediate(I) {
  gate_up_proj = register_parameter("gate_up_proj", torch::empty({E, 2 * I, H}));
  down_proj = register_parameter("down_proj", torch::empty({E, H, I}));
}

void RoutedExpertsImpl::add_lora(int64_t r_gu, double s_gu, int64_t r_down, double s_down, at::Generator gen) {
  at::NoGradGuard no_grad;
  const int64_t E = num_experts, H = gate_up_proj.size(2), I = intermediate;
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  // PEFT's init: A kaiming-uniform (bound 1/sqrt(in)), B zeros.
  auto draw = [&](int64_t rows, int64_t in) {
    Tensor a = at::empty({E, rows, in}, f32);
    a.uniform_(-1.0 / std::sqrt((double)in), 1.0 / std::sqrt((double)in), gen);
    return a.to(gate_up_proj.device());
  };
  if (r_gu > 0) {
    gate_up_lora_A = register_parameter("gate_up_lora_A", draw(r_gu, H));
    gate_up_lora_B = register_parameter("gate_up_lora_B", at::zeros({E, 2 * I, r_gu}, f32.device(gate_up_proj.device())));
    gate_up_lora_scaling = s_gu;
  }
  if (r_down > 0) {
    down_lora_A = register_parameter("down_lora_A", draw(r_down, I));
    down_lora_B = register_parameter("down_lora_B", at::zeros({E, H, r_down}, f32.device(gate_up_proj.device())));
    down_lora_scaling = s_down;
  }
}

Tensor RoutedExpertsImpl::effective_gate_up() const {
  if (!gate_up_lora_A.defined() || !lora_enabled) return gate_up_proj;
  return gate_up_proj + (at::bmm(gate_up_lora_B, gate_up_lora_A) * gate_up_lora_scaling).to(gate_up_proj.scalar_type());
}

Tensor RoutedExpertsImpl::effective_down() const {
  if (!down_lora_A.defined() || !lora_enabled) return down_proj;
  return down_proj + (at::bmm(down_lora_B, down_lora_A) * down_lora_scaling).to(down_proj.scalar_type());
}

// gu (n, 2I): gate columns then up columns -> silu(gate) * up, (n, I).
Tensor RoutedExpertsImpl::swiglu(const Tensor& gu) const {
  return at::silu(gu.narrow(-1, 0, intermediate)) * gu.narrow(-1, intermediate, intermediate);
}

bool RoutedExpertsImpl::use_grouped_mm(const Tensor& x) const {
  static const bool forced_loop = std::getenv("GRPO_MOE_LOOP") != nullptr;
  return !forced_loop && x.is_cuda() && x.scalar_type() == at::kBFloat16;
}

Tensor RoutedExpertsImpl::count(const Tensor& experts, int64_t E) {
  // index_add rather than bincount, which reads the largest id back to the host.
  Tensor ids = experts.reshape({-1});
  return at::zeros({E}, ids.options()).index_add_(0, ids, at::ones_like(ids));
}

Tensor RoutedExpertsImpl::forward(const Tensor& x, const Tensor& experts, const Tensor& weights,
                                  const Tensor& counts_in) {
  Tensor counts = counts_in.defined() ? counts_in : count(experts, num_experts);
  const int64_t N = x.size(0), k = experts.size(1), H = x.size(1);
  Tensor flat = experts.reshape({-1});  // (N*k)
  Tensor order = std::get<1>(flat.sort(/*stable=*/true, 0, false));
  Tensor token = at::div(order, k, "floor");
  Tensor xs = x.index_select(0, token);                 // (N*k, H), grouped by expert
  Tensor ys;
  // Adapters act as a low-rank side path, x W^T + scaling (x A^T) B^T, never as a formed W + B A:
  // forming it would write a second copy of every expert weight per forward (and keep one per
  // captured CUDA graph). The grouped path runs the side path as grouped GEMMs in bf16 when the
  // rank meets their 16-byte alignment, and forms the weight otherwise.
  const bool lora_gu = gate_up_lora_A.defined() && lora_enabled, lora_down = down_lora_A.defined() && lora_enabled;
  if (use_grouped_mm(x)) {
    // One grouped GEMM over all experts (CUDA, bf16): no host sync, no per-expert launches.
    Tensor offsets = counts.cumsum(0).to(at::kInt);
    auto aligned = [](const Tensor& a) { return !a.defined() || a.size(1) % 8 == 0; };
    const bool side = aligned(gate_up_lora_A) && aligned(down_lora_A);
    auto product = [&](const Tensor& in, const Tensor& w, bool lora, const Tensor& A, const Tensor& B, double s,
                       const Tensor& formed) {
      if (lora && !side) return at::_grouped_mm(in, formed.transpose(1, 2), offsets);
      Tensor y = at::_grouped_mm(in, w.transpose(1, 2), offsets);
      if (!lora) return y;
      Tensor a = at::_grouped_mm(in, A.to(in.scalar_type()).transpose(1, 2), offsets);
      return y + at::_grouped_mm(a, B.to(in.scalar_type()).transpose(1, 2), offsets) * s;
    };
    Tensor gu = product(xs, gate_up_proj, lora_gu, gate_up_lora_A, gate_up_lora_B, gate_up_lora_scaling,
                        lora_gu && !side ? effective_gate_up() : Tensor());  // (N*k, 2I)
    ys = product(swiglu(gu), down_proj, lora_down, down_lora_A, down_lora_B, down_lora_scaling,
                 lora_down && !side ? effective_down() : Tensor());  // (N*k, H)
  } else {
    // One matmul per expert over its contiguous block. unbind() (not indexing) so that backward
    // assembles each weight gradient once instead of once per expert. Adapters in fp32, as LinearImpl.
    Tensor cpu_counts = counts.to(at::kCPU);  // one host sync per layer
    const int64_t* cnt = cpu_counts.data_ptr<int64_t>();
    std::vector<Tensor> w_gu = gate_up_proj.unbind(0), w_down = down_proj.unbind(0);
    std::vector<Tensor> a_gu, b_gu, a_down, b_down;
    if (lora_gu) a_gu = gate_up_lora_A.unbind(0), b_gu = gate_up_lora_B.unbind(0);
    if (lora_down) a_down = down_lora_A.unbind(0), b_down = down_lora_B.unbind(0);
    std::vector<Tensor> outs;
    int64_t offset = 0;
    for (int64_t e = 0; e < num_experts; ++e) {
      if (cnt[e] == 0) continue;
      Tensor xe = xs.narrow(0, offset, cnt[e]);
      Tensor gu = at::matmul(xe, w_gu[e].t());  // (n_e, 2I)
      if (lora_gu) gu = add_low_rank(gu, xe, a_gu[e], b_gu[e], gate_up_lora_scaling);
      Tensor h = swiglu(gu);
      Tensor y = at::matmul(h, w_down[e].t());  // (n_e, H)
      if (lora_down) y = add_low_rank(y, h, a_down[e], b_down[e], down_lora_scaling);
      outs.push_back(y);
      offset += cnt[e];
    }
    ys = at::cat(outs, 0);
  }
  Tensor ws = weights.reshape({-1}).index_select(0, order).unsqueeze(1);  // fp32
  ys = (ys * ws).to(x.scalar_type());
  return at::zeros({N, H}, x.options()).index_add(0, token, ys);
}

// ---------------------------------------------------------------------------------------------
MoEImpl::MoEImpl(const ModelConfig& c) {
  gate = register_module("gate", Router(c));
  experts = register_module("experts", RoutedExperts(c.n_routed_experts, c.hidden_size, c.moe_intermediate_size));
  if (c.n_shared_experts > 0)
    shared_experts =
        register_module("shared_experts", MLP(c.hidden_size, c.moe_intermediate_size * c.n_shared_experts));
}

Tensor MoEImpl::forward(const Tensor& x, RouterImpl::Routing* routing_out) {
  Tensor flat = x.reshape({-1, x.size(-1)});
  auto routing = gate(flat);
  Tensor load;  // tokens per expert (E)
  {
    at::NoGradGuard no_grad;
    load = RoutedExpertsImpl::count(routing.experts, experts->num_experts);
  }
  if (routing_out) *routing_out = routing;
  Tensor out = experts(flat, routing.experts, routing.weights, load).view(x.sizes());
  if (shared_experts) out = out + shared_experts(x);
  return out;
}

// ---------------------------------------------------------------------------------------------
DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, int64_t layer_idx, bool mtp) {
  self_attn = register_module("self_attn", MLA(c));
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
    eh_proj = register_module("eh_proj", linear(2 * c.hidden_size, c.hidden_size));
    shared_head = register_module("shared_head", std::make_shared<nn::Module>());
    shared_head_norm = shared_head->register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
    shared_head_head = shared_head->register_module("head", linear(c.hidden_size, c.vocab_size));
  }
}

Tensor DecoderLayerImpl::feed_forward(const Tensor& x, RouterImpl::Routing* routing) {
  return moe ? moe->forward(x, routing) : dense_mlp(x);
}

Tensor DecoderLayerImpl::forward(const Tensor& x, const RopeTables& rope, const AttentionMask& mask, Tensor* latent,
                                 RouterImpl::Routing* routing) {
  Tensor h = x + self_attn->forward(input_layernorm(x), rope, mask, latent);
  return h + feed_forward(post_attention_layernorm(h), routing);
}

// ---------------------------------------------------------------------------------------------
DeepseekModelImpl::DeepseekModelImpl(const ModelConfig& c) {
  embed_tokens = register_module("embed_tokens", nn::Embedding(c.vocab_size, c.hidden_size));
  layers = register_module("layers", nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers + c.num_nextn_predict_layers; ++i)
    layers->push_back(DecoderLayer(c, i, /*mtp=*/i >= c.num_hidden_layers));
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

DeepseekForCausalLM::DeepseekForCausalLM(ModelConfig config) : config_(std::move(config)) {
  model = register_module("model", DeepseekModel(config_));
  if (!config_.tie_word_embeddings) lm_head = register_module("lm_head", linear(config_.hidden_size, config_.vocab_size));
  inv_freq_ = rope_inv_freq(config_);
}

at::Device DeepseekForCausalLM::device() const { return model->embed_tokens->weight.device(); }
at::ScalarType DeepseekForCausalLM::dtype() const { return model->embed_tokens->weight.scalar_type(); }

void DeepseekForCausalLM::to_device_dtype(at::Device device, at::ScalarType dtype) {
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

RopeTables DeepseekForCausalLM::rope_tables(const Tensor& position_ids, at::ScalarType dtype) const {
  if (!inv_freq_device_.defined() || inv_freq_device_.device() != position_ids.device())
    inv_freq_device_ = inv_freq_.to(position_ids.device());
  const Tensor& inv = inv_freq_device_;
  Tensor freqs = position_ids.to(at::kFloat).unsqueeze(-1) * inv;  // (B, T, d/2)
  double factor = config_.rope_attention_factor();
  Tensor cos = (freqs.cos() * factor).to(dtype).unsqueeze(2);       // (B, T, 1, d/2)
  Tensor sin = (freqs.sin() * factor).to(dtype).unsqueeze(2);
  return {cos, sin};
}

Tensor DeepseekForCausalLM::hidden_states(const Tensor& input_ids, const std::optional<Tensor>& attention_mask,
                                          const std::optional<Tensor>& position_ids, std::vector<Tensor>* latents,
                                          std::vector<RouterImpl::Routing>* routing) {
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
  return run_layers(ids, pos, mask, latents, routing);
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

}  // namespace

Tensor DeepseekForCausalLM::run_layers(const Tensor& ids, const Tensor& pos, const AttentionMask& mask,
                                       std::vector<Tensor>* latents, std::vector<RouterImpl::Routing>* routing) {
  Tensor h = model->embed_tokens(ids);
  RopeTables rope = rope_tables(pos, h.scalar_type());
  if (latents) latents->assign(config_.num_hidden_layers, Tensor());
  if (routing) routing->clear();
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    auto layer = model->layers[i]->as<DecoderLayer>();
    RouterImpl::Routing* r = nullptr;
    if (routing && layer->moe) r = &routing->emplace_back();
    if (gradient_checkpointing && at::GradMode::is_enabled() && !latents) {
      auto call = c10::make_intrusive<LayerCall>();
      call->run = [layer, rope, mask](const Tensor& x, RouterImpl::Routing* rr) { return layer->forward(x, rope, mask, nullptr, rr); };
      call->routing = r;
      // The input must take part in the graph even when nothing before it is trained (LoRA with a
      // frozen embedding), or no gradient would reach the layer's adapters.
      if (!h.requires_grad()) h = h.detach().requires_grad_(true);
      h = LayerCheckpoint::apply(h, call);
    } else {
      h = layer->forward(h, rope, mask, latents ? &(*latents)[i] : nullptr, r);
    }
  }
  return model->norm(h);
}

Tensor DeepseekForCausalLM::packed_target_logprobs(const Tensor& input_ids, const Tensor& segment_ids,
                                                   const Tensor& position_ids, const Tensor& targets) {
  const auto dev = device();
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  for (const Tensor* t : {&segment_ids, &position_ids, &targets})
    if (t->dim() != 2 || t->size(0) != B || t->size(1) != T)
      throw Error("packed_target_logprobs: segment_ids, position_ids and targets must be (B, T) like input_ids");
  Tensor seg = segment_ids.to(dev);
  Tensor causal = at::ones({T, T}, at::TensorOptions().dtype(at::kBool).device(dev)).tril();
  AttentionMask mask;
  mask.allowed = (causal.unsqueeze(0) & seg.unsqueeze(2).eq(seg.unsqueeze(1))).unsqueeze(1);  // (B, 1, T, T)
  Tensor h = run_layers(input_ids.to(dev), position_ids.to(dev), mask, nullptr, nullptr);
  Tensor tgt = targets.to(dev).reshape({-1});
  Tensor rows = tgt.ge(0).nonzero().squeeze(1);
  return target_logprobs(h.reshape({B * T, -1}).index_select(0, rows), tgt.index_select(0, rows), nullptr);
}

Tensor DeepseekForCausalLM::target_logprobs(const Tensor& hs, const Tensor& tgt, Tensor* entropy) {
  const int64_t V = config_.vocab_size, M = hs.size(0);
  const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 27) / (4 * V));
  std::vector<Tensor> lp, ent;
  for (int64_t s = 0; s < M; s += chunk) {
    int64_t n = std::min(chunk, M - s);
    Tensor lg = logits(hs.narrow(0, s, n)).to(at::kFloat);
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

Tensor DeepseekForCausalLM::lm_head_weight() { return lm_head ? lm_head->weight : model->embed_tokens->weight; }

Tensor DeepseekForCausalLM::logits(const Tensor& hidden) { return at::linear(hidden, lm_head_weight()); }

std::vector<Tensor> DeepseekForCausalLM::completion_logprobs(const std::vector<std::vector<int64_t>>& prompts,
                                                             const std::vector<std::vector<int64_t>>& completions) {
  return completion_forward(prompts, completions, {}).logprobs;
}

DeepseekForCausalLM::CompletionOutputs DeepseekForCausalLM::completion_forward(
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
  // Right padding: plain causal attention is exact.
  Tensor h = hidden_states(input, std::nullopt, std::nullopt, nullptr, options.routing ? &result.routing : nullptr);
  result.token_mask = at::from_blob(real.data(), {B, T}, at::TensorOptions().dtype(at::kFloat)).clone().to(dev);
  std::vector<Tensor> flat_lp, flat_entropy;
  if (!rows.empty()) {
    Tensor row_idx = at::from_blob(rows.data(), {(int64_t)rows.size()}, long_opts).clone().to(dev);
    Tensor tgt = at::from_blob(targets.data(), {(int64_t)targets.size()}, long_opts).clone().to(dev);
    Tensor ent;
    flat_lp.push_back(target_logprobs(h.reshape({B * T, -1}).index_select(0, row_idx), tgt, options.entropy ? &ent : nullptr));
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
  return result;
}

}  // namespace grpo::model
