#include "rollout/sampling.h"

#include <ATen/ATen.h>
#include <ATen/ops/searchsorted.h>

#include "model/fused_kernels.h"
#include "model/kernel_trial.h"
#include "rollout/upload.h"

namespace grpo::rollout {

using at::Tensor;

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

float sample_uniform(uint64_t seed, int64_t prompt_index, int64_t sample_index, int64_t j) {
  uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ static_cast<uint64_t>(prompt_index));
  h = splitmix64(h ^ static_cast<uint64_t>(sample_index));
  h = splitmix64(h ^ static_cast<uint64_t>(j));
  return static_cast<float>(h >> 40) * (1.0f / 16777216.0f);  // 24 bits: exact in fp32, < 1
}

Tensor keep_nucleus(const Tensor& sorted_probs, const Tensor& kk, const Tensor& pp) {
  const int64_t V = sorted_probs.size(1);
  Tensor rank = at::arange(V, sorted_probs.options()).unsqueeze(0);
  Tensor sp = sorted_probs * (rank < kk);
  Tensor before = sp.cumsum(-1) - sp;
  return sp * ((before < pp * sp.sum(-1, true)) | (rank == 0));
}

std::pair<Tensor, Tensor> sample_tokens(const Tensor& logits, const std::vector<float>& temperature,
                                        const std::vector<int64_t>& top_k, const std::vector<float>& top_p,
                                        const std::vector<float>& uniform) {
  const int64_t B = logits.size(0), V = logits.size(1);
  const auto dev = logits.device();
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  // Per-row settings, packed into one host->device copy; the last row the temperatures as given
  // (0: greedy), for the sampler in one kernel.
  std::vector<float> packed(5 * B);
  bool filter = false, any_greedy = false;
  for (int64_t b = 0; b < B; ++b) {
    bool greedy = temperature[b] == 0;
    any_greedy |= greedy;
    int64_t k = top_k[b] > 0 && top_k[b] < V ? top_k[b] : V;
    filter |= !greedy && (k < V || top_p[b] < 1);
    packed[b] = greedy ? 1.0f : temperature[b];
    packed[B + b] = static_cast<float>(k);
    packed[2 * B + b] = top_p[b];
    packed[3 * B + b] = uniform[b];
    packed[4 * B + b] = greedy ? 0.0f : temperature[b];
  }
  Tensor settings = upload(at::from_blob(packed.data(), {5, B, 1}, f32), dev);
  Tensor temp = settings[0], kk = settings[1], pp = settings[2], u = settings[3];
  // Without top-k and top-p, the whole sampler in one kernel on CUDA (adopted).
  if (!filter && model::kernel_adopted("fused_sampler")) {
    auto [token, lp] = model::fused::sample(logits, settings[4].view({B}), u.view({B}));
    if (token.defined()) return {token, lp};
  }

  Tensor logp = logits.log_softmax(-1);
  Tensor probs = (logits / temp).softmax(-1);
  Tensor token;
  if (filter) {
    auto sorted = probs.sort(-1, /*descending=*/true);
    Tensor sp = keep_nucleus(std::get<0>(sorted), kk, pp), si = std::get<1>(sorted);
    Tensor cdf = sp.cumsum(-1);
    Tensor pick = at::searchsorted(cdf, u * cdf.narrow(1, V - 1, 1), false, /*right=*/true).clamp_max(V - 1);
    // Rounding can put the target at the very end of the CDF: fall back to the most likely token.
    pick = at::where(sp.gather(1, pick) > 0, pick, at::zeros_like(pick));
    token = si.gather(1, pick);
  } else {
    Tensor cdf = probs.cumsum(-1);
    Tensor pick = at::searchsorted(cdf, u * cdf.narrow(1, V - 1, 1), false, /*right=*/true).clamp_max(V - 1);
    token = at::where(probs.gather(1, pick) > 0, pick, probs.argmax(-1, true));
  }
  if (any_greedy) {
    std::vector<uint8_t> g(B);
    for (int64_t b = 0; b < B; ++b) g[b] = temperature[b] == 0;
    Tensor greedy = upload(at::from_blob(g.data(), {B, 1}, at::TensorOptions().dtype(at::kBool)), dev);
    token = at::where(greedy, logits.argmax(-1, true), token);
  }
  Tensor lp = logp.gather(1, token);
  return {token.squeeze(1), lp.squeeze(1)};
}

}  // namespace grpo::rollout
