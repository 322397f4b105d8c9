#include "model/layers.h"

#include <ATen/Context.h>
#include <ATen/ops/scaled_dot_product_attention.h>

#include <cmath>
#include <limits>
#include <vector>

#include "model/fused_kernels.h"
#include "model/train_kernels.h"

namespace grpo::model {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
}

Tensor RMSNormImpl::forward(const Tensor& x) {
  if (fused::active(x))
    if (Tensor y = fused::rms_norm(x, weight, eps); y.defined()) return y;
  if (train::active(x))
    if (Tensor y = train::rms_norm(x, weight, eps); y.defined()) return y;
  auto xf = x.to(at::kFloat);
  auto variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * at::rsqrt(variance + eps);
  return weight * xf.to(x.scalar_type());
}

// ---------------------------------------------------------------------------------------------
MLPImpl::MLPImpl(int64_t hidden, int64_t intermediate) {
  gate_proj = register_module("gate_proj", Linear(hidden, intermediate));
  up_proj = register_module("up_proj", Linear(hidden, intermediate));
  down_proj = register_module("down_proj", Linear(intermediate, hidden));
}

Tensor MLPImpl::forward(const Tensor& x) {
  Tensor gate = gate_proj(x), up = up_proj(x), h;
  if (fused::active(x)) h = fused::swiglu(gate, up);
  else if (train::active(x)) h = train::swiglu(gate, up);
  return down_proj(h.defined() ? h : at::silu(gate) * up);
}

// ---------------------------------------------------------------------------------------------
Tensor rope_inv_freq(const ModelConfig& c) {
  const int64_t dim = c.rope_dim();
  auto opts = at::TensorOptions().dtype(at::kFloat);
  // base ** (arange(0, dim, 2) / dim), in fp32 as transformers does.
  Tensor pos_freqs = at::pow(c.rope_theta, at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim));
  Tensor inv_freq = 1.0 / pos_freqs;
  if (c.rope_linear_factor != 1.0) return inv_freq / c.rope_linear_factor;
  if (c.llama3) {
    // Llama 3: long wavelengths slowed by `factor`, short ones kept, a smooth blend between.
    const Llama3Scaling& l = *c.llama3;
    const double old_len = static_cast<double>(l.original_max_position_embeddings);
    const double low_freq_wavelen = old_len / l.low_freq_factor, high_freq_wavelen = old_len / l.high_freq_factor;
    // scalar / tensor as Python evaluates it (tensor.reciprocal() * scalar), for the same rounding.
    Tensor wavelen = inv_freq.reciprocal() * (2 * M_PI);
    Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / l.factor, inv_freq);
    Tensor smooth = (wavelen.reciprocal() * old_len - l.low_freq_factor) / (l.high_freq_factor - l.low_freq_factor);
    Tensor smoothed = (1 - smooth) * scaled / l.factor + smooth * scaled;
    Tensor medium = (wavelen < high_freq_wavelen).logical_not() & (wavelen > low_freq_wavelen).logical_not();
    return at::where(medium, smoothed, scaled);
  }
  if (!c.yarn) return inv_freq;
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
  return interpolation * (1 - extrapolation_factor) + inv_freq * extrapolation_factor;
}

bool RopeTables::fit(const Tensor& x, int64_t half) const {
  for (const Tensor* t : {&cos, &sin})
    if (t->scalar_type() != x.scalar_type() || t->device() != x.device() || t->dim() != 4 || x.dim() < 2 ||
        t->size(0) != x.size(0) || t->size(1) != x.size(1) || t->size(2) != 1 || t->size(3) != half ||
        !t->is_contiguous())
      return false;
  return true;
}

Tensor apply_rope(const Tensor& x, const RopeTables& rope, bool interleave) {
  if (fused::active(x))
    if (Tensor y = fused::rope(x, rope, interleave); y.defined()) return y;
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

Tensor causal_attention(const Tensor& query, const Tensor& key, const Tensor& value, const AttentionMask& mask,
                        double scale) {
  return mask.allowed ? at::scaled_dot_product_attention(query, key, value, *mask.allowed, 0.0, false, scale)
                      : at::scaled_dot_product_attention(query, key, value, {}, 0.0, true, scale);
}

const Tensor& PagedKV::gather_index() const {
  if (!gather_index_.defined())
    gather_index_ = (table.unsqueeze(-1) * block_size + at::arange(block_size, table.options())).view({-1});
  return gather_index_;
}

const Tensor& PagedKV::invalid() const {
  if (!invalid_.defined()) {
    Tensor key = at::arange(padded_keys(), lens.options()).unsqueeze(0);
    invalid_ = ((key >= lens.unsqueeze(1)) | (key < key_start)).unsqueeze(1);
  }
  return invalid_;
}

Tensor masked_softmax(const Tensor& scores, const Tensor& invalid, at::ScalarType dtype) {
  return scores.masked_fill(invalid, -std::numeric_limits<float>::infinity()).softmax(-1).to(dtype);
}

}  // namespace grpo::model
