#include "model/fp8.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/_scaled_grouped_mm.h>
#include <ATen/ops/_scaled_mm.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <string>

#include "model/linear.h"
#include "model/moe.h"
#include "util/error.h"

#ifdef GRPO_FP8_CUDA
#include "model/fp8_cuda.h"
#endif

namespace grpo::model::fp8 {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// s = amax / 448, and 1 where the group is all zeros (its values quantize to 0 whatever s is). A
// true division by a tensor: ATen's CUDA division by a scalar multiplies by its reciprocal, which
// is not the same rounding.
Tensor scale_of(const Tensor& amax) {
  return at::where(amax > 0, amax / at::full_like(amax, kMax), at::ones_like(amax));
}

int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// One matrix (N, K) -> e4m3 values and its scales, per 128 x 128 block (K padded to kPadCols) or
// per row.
std::pair<Tensor, Tensor> quantize_matrix(const Tensor& w, bool rows) {
  Tensor wf = w.to(at::kFloat);
  const int64_t N = wf.size(0), K = wf.size(1);
  if (rows) {
    Tensor s = scale_of(wf.abs().amax(-1));
    return {(wf / s.unsqueeze(1)).to(at::kFloat8_e4m3fn), s};
  }
  const int64_t nb = ceil_div(N, kBlock), Kp = round_up(K, kPadCols), kb = Kp / kBlock;
  Tensor blocks = at::constant_pad_nd(wf, {0, Kp - K, 0, nb * kBlock - N}).view({nb, kBlock, kb, kBlock});
  Tensor s = scale_of(blocks.abs().amax({1, 3}));  // (nb, kb)
  Tensor q = (blocks / s.view({nb, 1, kb, 1})).view({nb * kBlock, Kp}).narrow(0, 0, N);
  return {q.to(at::kFloat8_e4m3fn), s};
}

void store(Tensor& dst, const Tensor& src, const char* what) {
  if (!dst.defined()) {
    dst = src.contiguous();
    return;
  }
  if (!dst.sizes().equals(src.sizes()))
    throw Error(std::string("fp8: the ") + what + " changed shape since it was first quantized");
  dst.copy_(src);
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Layers the FP8 copies leave in the model dtype (see the header).
bool eligible(const std::string& name, const LinearImpl& lin) {
  if (ends_with(name, "kv_b_proj") || ends_with(name, "shared_head.head")) return false;
  return lin.in_features % 16 == 0 && lin.out_features % 16 == 0;
}

bool eligible(const RoutedExpertsImpl& ex) {
  const int64_t H = ex.gate_up_proj.size(2), I = ex.intermediate;
  return H % 16 == 0 && I % 16 == 0;
}

int64_t bytes_of(const Weight& w) {
  return w.defined() ? w.q.numel() * (int64_t)w.q.element_size() + w.scale.numel() * (int64_t)w.scale.element_size() : 0;
}

}  // namespace

void quantize_weight(const Tensor& w, Weight& out, bool rows) {
  at::NoGradGuard no_grad;
  Tensor src = w.detach();
  out.cols = src.size(-1);
  if (src.dim() == 2) {
    auto [q, s] = quantize_matrix(src, rows);
    store(out.q, q, "weight");
    store(out.scale, s, "weight's scales");
    return;
  }
  if (src.dim() != 3) throw Error("fp8: expected a weight (N, K) or a stack (E, N, K), got " + std::to_string(src.dim()) + "-d");
  // One expert at a time: the fp32 temporaries stay the size of one matrix.
  const int64_t E = src.size(0);
  for (int64_t e = 0; e < E; ++e) {
    auto [q, s] = quantize_matrix(src[e], rows);
    std::vector<int64_t> qs{E}, ss{E};
    qs.insert(qs.end(), q.sizes().begin(), q.sizes().end());
    ss.insert(ss.end(), s.sizes().begin(), s.sizes().end());
    if (!out.q.defined()) {
      out.q = at::empty(qs, q.options());
      out.scale = at::empty(ss, s.options());
    } else if (!out.q.sizes().equals(qs) || !out.scale.sizes().equals(ss)) {
      throw Error("fp8: the expert stack changed shape since it was first quantized");
    }
    out.q[e].copy_(q);
    out.scale[e].copy_(s);
  }
}

std::pair<Tensor, Tensor> quantize_activations_reference(const Tensor& x, int64_t group, int64_t cols,
                                                         int64_t row_multiple) {
  if (x.dim() != 2) throw Error("fp8: activations must be (M, K)");
  Tensor xf = x.to(at::kFloat);
  if (group == 0) {
    Tensor s = scale_of(xf.abs().amax(-1));
    return {(xf / s.unsqueeze(1)).to(at::kFloat8_e4m3fn), s};
  }
  if (group != kBlock) throw Error("fp8: activation groups are 128 columns or whole rows");
  const int64_t M = xf.size(0), K = xf.size(1), Mp = round_up(M, row_multiple), Kp = std::max(K, cols);
  const int64_t G = ceil_div(Kp, kBlock);
  Tensor blocks = at::constant_pad_nd(xf, {0, G * kBlock - K, 0, Mp - M}).view({Mp, G, kBlock});
  Tensor s = scale_of(blocks.abs().amax(-1));  // (Mp, G)
  Tensor q = (blocks / s.unsqueeze(-1)).view({Mp, G * kBlock}).narrow(1, 0, Kp).to(at::kFloat8_e4m3fn);
  return {q, s.t().contiguous().t()};  // Mp contiguous, as _scaled_mm reads 1 x 128 scales
}

std::pair<Tensor, Tensor> quantize_activations(const Tensor& x, int64_t group, int64_t cols, int64_t row_multiple) {
#ifdef GRPO_FP8_CUDA
  if (x.is_cuda() && cuda::fp8_quantize_supported(x)) return cuda::fp8_quantize(x, group, cols, row_multiple);
#endif
  return quantize_activations_reference(x, group, cols, row_multiple);
}

Tensor dequantize(const Weight& w, bool rows) {
  Tensor q = w.q.to(at::kFloat);
  if (rows) return q * w.scale.unsqueeze(-1);
  const int64_t N = q.size(-2), Kp = q.size(-1);
  Tensor s = w.scale.repeat_interleave(kBlock, -2).repeat_interleave(kBlock, -1);
  return (q * s.narrow(-2, 0, N).narrow(-1, 0, Kp)).narrow(-1, 0, w.cols);
}

bool native(const at::Device& device) {
  if (!device.is_cuda()) return false;
  return at::cuda::getDeviceProperties(device.index())->major == 9;
}

Tensor linear(const Tensor& x, const Weight& w, const Tensor& bias, at::ScalarType out_dtype) {
  const int64_t K = x.size(-1), N = w.q.size(0), Kp = w.q.size(1);
  if (K != w.cols) throw Error("fp8 linear: input width " + std::to_string(K) + ", weight width " + std::to_string(w.cols));
  Tensor x2 = x.reshape({-1, K}).contiguous();
  const int64_t M = x2.size(0);
  Tensor y;
  if (native(x.device())) {
    auto [q, s] = quantize_activations(x2, kBlock, Kp, kPadRows);
    const bool fused_bias = bias.defined() && bias.scalar_type() == at::kBFloat16 && out_dtype == at::kBFloat16;
    y = at::_scaled_mm(q, w.q.t(), s, w.scale.t(), fused_bias ? std::optional<Tensor>(bias) : std::nullopt,
                       std::nullopt, out_dtype);
    if (y.size(0) != M) y = y.narrow(0, 0, M);
    if (bias.defined() && !fused_bias) y = (y.to(at::kFloat) + bias.to(at::kFloat)).to(out_dtype);
  } else {
    // Unpadded: the zero columns cuBLAS needs change no group's maximum and add nothing here.
    auto [q, s] = quantize_activations(x2, kBlock);
    Tensor xd = q.to(at::kFloat) * s.repeat_interleave(kBlock, 1).narrow(1, 0, K);
    y = at::matmul(xd, dequantize(w).t());
    if (bias.defined()) y = y + bias.to(at::kFloat);
    y = y.to(out_dtype);
  }
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y.reshape(shape);
}

Tensor grouped(const Tensor& x, const Weight& w, const Tensor& counts) {
  auto [q, s] = quantize_activations(x.contiguous(), 0);
  if (native(x.device()) && x.scalar_type() == at::kBFloat16) {
    Tensor offsets = counts.cumsum(0).to(at::kInt);
    return at::_scaled_grouped_mm(q, w.q.transpose(1, 2), s, w.scale, offsets, std::nullopt, std::nullopt,
                                  at::kBFloat16);
  }
  // Emulation: one product per expert over its rows (a host synchronisation for the counts).
  Tensor cpu_counts = counts.to(at::kCPU, at::kLong);
  const int64_t* cnt = cpu_counts.data_ptr<int64_t>();
  Tensor xd = q.to(at::kFloat) * s.unsqueeze(1);
  std::vector<Tensor> outs;
  int64_t offset = 0;
  for (int64_t e = 0; e < cpu_counts.size(0); ++e) {
    if (cnt[e] == 0) continue;
    Tensor we = w.q[e].to(at::kFloat) * w.scale[e].unsqueeze(1);
    outs.push_back(at::matmul(xd.narrow(0, offset, cnt[e]), we.t()));
    offset += cnt[e];
  }
  if (outs.empty()) return at::zeros({0, w.q.size(1)}, x.options());
  return at::cat(outs, 0).to(x.scalar_type());
}


int64_t quantize_model(torch::nn::Module& model) {
  int64_t bytes = 0;
  for (const auto& item : model.named_modules()) {
    torch::nn::Module* m = item.value().get();
    if (auto* lin = dynamic_cast<LinearImpl*>(m)) {
      if (!eligible(item.key(), *lin)) continue;
      quantize_weight(lin->effective_weight(), lin->fp8);
      bytes += bytes_of(lin->fp8);
    } else if (auto* ex = dynamic_cast<RoutedExpertsImpl*>(m)) {
      if (!eligible(*ex)) continue;
      quantize_weight(ex->effective_gate_up(), ex->fp8_gate_up, /*rows=*/true);
      quantize_weight(ex->effective_down(), ex->fp8_down, /*rows=*/true);
      bytes += bytes_of(ex->fp8_gate_up) + bytes_of(ex->fp8_down);
    }
  }
  return bytes;
}

int64_t quantized_layers(torch::nn::Module& model) {
  int64_t n = 0;
  for (const auto& m : model.modules()) {
    if (auto* lin = dynamic_cast<LinearImpl*>(m.get())) n += lin->fp8.defined();
    if (auto* ex = dynamic_cast<RoutedExpertsImpl*>(m.get())) n += ex->fp8_gate_up.defined();
  }
  return n;
}

}  // namespace grpo::model::fp8
