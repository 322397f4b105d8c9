#include "trainer/grpo_trainer_impl.h"

#include <c10/core/GradMode.h>
#include <torch/nn/utils/clip_grad.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "model/flops.h"
#include "trainer/data_parallel.h"
#include "trainer/device_scalars.h"
#include "trainer/grpo_loss.h"
#include "trainer/moe_balance.h"
#include "trainer/overlapped_reduce.h"
#include "util/error.h"
#include "util/json.h"

namespace grpo::trainer {

using at::Tensor;
using json = nlohmann::json;
using Model = model::CausalLM;

namespace {

// Clears CausalLM::batch_invariant for its lifetime: a forward whose values equal no engine's (the
// reference's log-probs through the policy with its adapters off) takes the ordinary forward.
class OrdinaryForward {
 public:
  explicit OrdinaryForward(model::CausalLM& m) : m_(m), was_(m.batch_invariant) { m_.batch_invariant = false; }
  ~OrdinaryForward() { m_.batch_invariant = was_; }
  OrdinaryForward(const OrdinaryForward&) = delete;
  OrdinaryForward& operator=(const OrdinaryForward&) = delete;

 private:
  model::CausalLM& m_;
  bool was_;
};

// The update's mini-batches [s0, s0 + n): mini_batch_size sequences each, or as many consecutive
// sequences as fit max_tokens_per_mini_batch once padded (n x the longest prompt + completion among
// them; at least one), or the whole batch.
std::vector<std::pair<int64_t, int64_t>> mini_batches(const RolloutBatch& b, const OptimSettings& o) {
  const int64_t Bn = (int64_t)b.prompts.size();
  std::vector<std::pair<int64_t, int64_t>> out;
  if (o.max_tokens_per_mini_batch > 0) {
    int64_t s0 = 0, longest = 0;
    for (int64_t i = 0; i < Bn; ++i) {
      const int64_t len = (int64_t)(b.prompts[i].size() + b.completions[i].size());
      const int64_t n = i - s0 + 1;
      if (n > 1 && n * std::max(longest, len) > o.max_tokens_per_mini_batch) {
        out.emplace_back(s0, i - s0);
        s0 = i;
        longest = 0;
      }
      longest = std::max(longest, len);
    }
    if (s0 < Bn) out.emplace_back(s0, Bn - s0);
    return out;
  }
  const int64_t mb = o.mini_batch_size > 0 ? o.mini_batch_size : std::max<int64_t>(Bn, 1);
  for (int64_t s0 = 0; s0 < Bn; s0 += mb) out.emplace_back(s0, std::min(mb, Bn - s0));
  return out;
}

}  // namespace

// The overlapped gradient exchange, where this run has one: several ranks with overlap_grad_reduce,
// replicas (zero_stage 0) or zero_stage 2 with a sharded fp32 master. Built at the first update
// (after the master is sharded).
OverlappedReduce* GrpoTrainer::overlapped_reduce() {
  if (!comm_ || !s_.optim.overlap_grad_reduce) return nullptr;
  const bool replicas = s_.optim.zero_stage == 0, to_owners = zero_->reduces_per_pass(pol_);
  if (!replicas && !to_owners) return nullptr;
  if (!overlap_) {
    std::vector<Tensor> master = pol_.trainable_parameters();
    std::vector<Tensor> compute = pol_.has_lora() ? master : policy_->parameters();
    overlap_ = std::make_unique<OverlappedReduce>(
        *comm_, to_owners ? OverlappedReduce::Mode::ReduceToOwners : OverlappedReduce::Mode::AllReduce, compute, master,
        to_owners ? zero_->owner() : std::vector<int>{}, s_.optim.bucket_cap_mb);
    log_->line("gradient exchange: " + std::to_string(overlap_->buckets()) + " bucket(s) of at most " +
               std::to_string((int64_t)std::ceil(s_.optim.bucket_cap_mb * 1024)) + " KiB, " +
               (to_owners ? "reduced onto their owners" : "all-reduced") + " during the backward pass");
  }
  return overlap_.get();
}

// ---- num_iterations optimizer steps on one rollout batch, each over mini-batches whose losses
// are weighted to add up to the whole batch's loss (tokens for dapo, sequences for grpo and dr_grpo).
UpdateStats GrpoTrainer::update(const RolloutBatch& b) {
  UpdateStats u;
  // With several ranks every rank takes part in every collective below, a rank with nothing to
  // train on (dynamic sampling kept none of its groups, or its completions are all empty) too; the
  // step is skipped only when no rank has anything.
  const bool nothing = comm_ ? comm_->max(b.prompts.empty() ? 0.0 : 1.0) == 0 : b.prompts.empty();
  if (nothing) return u;
  const LossConfig& lc = s_.loss;
  int64_t max_len = 1;
  for (const auto& c : b.completions) max_len = std::max<int64_t>(max_len, c.size());
  auto [old_host, mask_host] = pad(b.old_logp, max_len, at::kFloat);  // the rollout's, padded on the host
  Tensor old_t = old_host.to(device_), mask = mask_host.to(device_);
  Tensor adv_t = at::tensor(b.advantages, at::kDouble).to(at::kFloat).to(device_);
  const int64_t Bn = (int64_t)b.prompts.size();
  const auto chunks = mini_batches(b, s_.optim);
  // Sequences [s0, s0 + n) of the batch: (prompts, completions).
  auto mini_batch = [&](int64_t s0, int64_t n) {
    using Rows = std::vector<std::vector<int64_t>>;
    return std::make_pair(Rows(b.prompts.begin() + s0, b.prompts.begin() + s0 + n),
                          Rows(b.completions.begin() + s0, b.completions.begin() + s0 + n));
  };
  // exact_rollout: a batch drawn with the very weights the first iteration trains (the synchronous
  // rollout, or the asynchronous one without staleness on this device) carries the batch-invariant
  // forward's values (the engine's log-probs) and routing (its records), equal to the bit; the
  // first iteration takes them instead of running that forward, but on check steps.
  const int64_t step = st_.step + 1, check_every = s_.rollout.exact_rollout_check_every;
  const bool drawn_with_these_weights =
      b.weights_step < 0 || (b.weights_step == st_.step && rollout_device() == device_);
  const bool check_step = check_every > 0 && (step - 1) % check_every == 0;
  const bool engine_values = s_.rollout.exact_rollout && drawn_with_these_weights && !check_step &&
                             b.routed_experts.size() == b.prompts.size();
  const size_t moe_count = moe_layers(*policy_).size();
  // The policy's forward options for sequences [s0, s0 + n): routing replay imposes their records;
  // `fresh` (the weights the batch was drawn with) lets exact_rollout take the engine's values.
  auto policy_options = [&](int64_t s0, int64_t n, bool entropy, bool routing, bool mtp, bool fresh) {
    Model::CompletionOptions o;
    o.entropy = entropy;
    o.routing = routing;
    if (mtp && s_.model.mtp_loss_weight > 0) {  // the MTP modules learn on the completions
      o.mtp_depths = policy_->config().num_nextn_predict_layers;
      o.mtp_detached = true;
    }
    const bool known = fresh && engine_values;
    if (s_.moe.routing_replay || (known && moe_count > 0))
      for (int64_t i = s0; i < s0 + n; ++i) o.replay_experts.push_back(&b.routed_experts.at(i));
    if (known)
      for (int64_t i = s0; i < s0 + n; ++i) o.invariant_logprobs.push_back(b.old_logp.at(i));
    return o;
  };
  for (const auto& r : b.routed_experts) u.routing_replay_mb += (double)(r.size() * sizeof(int16_t)) / (1 << 20);
  u.logprob_diff_measured = !engine_values;
  // Log-probs of the whole batch under `m`, without a graph, in the training mini-batches; the
  // policy's own forward replays the rollout's routing when asked, the reference's never does.
  auto batch_logprobs = [&](Model& m, bool replay) {
    c10::NoGradGuard g;
    std::vector<Tensor> rows;
    for (auto [s0, n] : chunks) {
      const auto [ps, cs] = mini_batch(s0, n);
      const Model::CompletionOptions o =
          replay ? policy_options(s0, n, false, false, false, /*fresh=*/true) : Model::CompletionOptions{};
      for (auto& t : m.completion_forward(ps, cs, o).logprobs) rows.push_back(t);
    }
    return pad(rows, max_len, at::kFloat).first;
  };
  Tensor ref_t;
  if (ref_) {
    ref_t = batch_logprobs(*ref_, false);
  } else if (s_.loss.beta > 0 && pol_.has_lora()) {
    // The base model is the reference: its log-probs need not equal any forward's bits (only the
    // ratio's two terms must), so exact_rollout's batch-invariant forward is not needed for them.
    model::AdaptersDisabled base(*policy_);
    OrdinaryForward ordinary(*policy_);
    ref_t = batch_logprobs(*policy_, false);
  }
  Tensor rollout_t = old_t;  // the engine's log-probs: rollout_logprob_diff, and rollout_is's denominator
  // The training forward in the same mini-batches as below, so that the first update's ratio is 1.
  if (s_.rollout.recompute_old_logprobs) old_t = batch_logprobs(*policy_, true);
  double forward = 0;  // model FLOPs of one forward over the batch
  for (int64_t i = 0; i < Bn; ++i) {
    const int64_t C = (int64_t)b.completions[i].size();
    forward += model::forward_flops(policy_->config(), (int64_t)b.prompts[i].size() + C - 1, C);
  }
  u.model_flops = forward * ((ref_t.defined() ? 1 : 0) + (s_.rollout.recompute_old_logprobs ? 1 : 0) +
                             3 * s_.optim.num_iterations);
  const bool want_routing = moe_count > 0;
  // Loss normalisers over the global batch: tokens (dapo) and sequences (grpo) of every rank.
  // Counted on the host copy of the mask: no wait for the device.
  double total_tokens = mask_host.sum().item<double>(), total_sequences = (double)Bn;
  if (comm_) {
    auto t = comm_->sum({total_tokens, total_sequences});
    total_tokens = t[0];
    total_sequences = t[1];
  }
  // zero_stage 2 with a sharded fp32 master: each backward pass's gradients go to their owners at
  // once, so the ranks agree on the number of passes (a rank with fewer runs empty ones).
  const bool per_pass = zero_->reduces_per_pass(pol_);
  const int64_t passes = zero_->passes(pol_, (int64_t)chunks.size());
  OverlappedReduce* overlap = overlapped_reduce();
  for (int64_t it = 0; it < s_.optim.num_iterations; ++it) {
    optimizer_->zero_grad();
    u.loss = u.clip_fraction = u.clip_low = u.clip_high = u.kl = u.aux_loss = u.entropy = u.mtp_loss = 0;  // the last iteration's
    u.is_ratio_mean = u.is_clipped = 0;
    u.is_ratio_min = 1e30;
    u.is_ratio_max = -1e30;
    u.grad_comm_overlap = overlap ? 0 : -1;
    std::vector<Tensor> loads(moe_count);
    // The statistics stay on the device until every pass has run: one host synchronisation per
    // iteration for them all. Per pass, where its values sit in `scalars`:
    struct PassStats {
      int64_t n = 0;
      double w = 0, tw = 0;
      size_t loss = 0, stats = 0, entropy = 0, diff = 0, aux = 0, mtp = 0;
      std::vector<size_t> agree;  // routing replay, first iteration: (same, tokens) per MoE layer
      bool has_aux = false, has_mtp = false;
    };
    DeviceScalars scalars;
    std::vector<PassStats> stats;
    std::vector<Tensor> diffs, diff_masks;  // first iteration: |log pi_train - log pi_rollout|, real tokens
    for (int64_t pass = 0; pass < passes; ++pass) {
      // With overlap the gradient collectives start during the backward pass: every pass when each
      // goes to the owners, else the last (the step's gradients are complete only then).
      if (overlap && (per_pass || pass + 1 == passes)) overlap->arm();
      if (pass < (int64_t)chunks.size()) {
        const auto [s0, n] = chunks[pass];
        const auto [ps, cs] = mini_batch(s0, n);
        auto out = policy_->completion_forward(
            ps, cs, policy_options(s0, n, /*entropy=*/true, /*routing=*/want_routing, /*mtp=*/true, /*fresh=*/it == 0));
        Tensor logp = pad(out.logprobs, max_len, at::kFloat).first;
        Tensor cmask = mask.narrow(0, s0, n);
        auto lo = grpo_loss({logp, old_t.narrow(0, s0, n), ref_t.defined() ? ref_t.narrow(0, s0, n) : Tensor(), cmask,
                             adv_t.narrow(0, s0, n), rollout_t.narrow(0, s0, n)},
                            lc);
        PassStats pass_stats;
        pass_stats.n = n;
        // this chunk's share of tokens, from the host copy of the mask
        pass_stats.tw = mask_host.narrow(0, s0, n).sum().item<double>() / std::max(1.0, total_tokens);
        pass_stats.w = lc.type == LossType::Dapo ? pass_stats.tw : (double)n / total_sequences;
        Tensor loss = lo.loss * pass_stats.w;
        pass_stats.loss = scalars.add(lo.loss);
        pass_stats.stats = scalars.add(lo.stats);
        pass_stats.entropy = scalars.add((pad(out.entropy, max_len, at::kFloat).first * cmask).sum());
        if (it == 0) {
          c10::NoGradGuard g;
          Tensor diff = (logp - rollout_t.narrow(0, s0, n)).abs();
          pass_stats.diff = scalars.add((diff * cmask).sum());
          diffs.push_back(diff);
          diff_masks.push_back(cmask.to(at::kBool));
        }
        if (want_routing) {
          if (out.routing.size() != moe_count) throw Error("MoE routing of an unexpected size in the training forward");
          Tensor aux;
          for (size_t l = 0; l < moe_count; ++l) {
            const auto& r = out.routing[l];
            if (it == 0) {  // the balancing bias moves once per step, from the load over real tokens
              Tensor load = expert_load(r.experts, out.token_mask, r.scores.size(1));
              loads[l] = loads[l].defined() ? loads[l] + load : load;
              if (r.own_experts.defined()) {  // replayed: would the router have chosen the same experts?
                c10::NoGradGuard g;
                Tensor same = std::get<0>(r.own_experts.sort(1)).eq(std::get<0>(r.experts.sort(1))).all(1).to(at::kFloat);
                pass_stats.agree.push_back(scalars.add(
                    at::stack({(same * out.token_mask.reshape({-1})).sum(), out.token_mask.sum().to(at::kFloat)})));
              }
            }
            if (s_.moe.aux_loss_alpha > 0) {
              Tensor a = sequence_aux_loss(r.scores, r.experts, out.token_mask, s_.moe.aux_loss_alpha);
              aux = aux.defined() ? aux + a : a;
            }
          }
          if (aux.defined()) {
            loss = loss + aux * ((double)n / total_sequences);
            pass_stats.aux = scalars.add(aux);
            pass_stats.has_aux = true;
          }
        }
        if (!out.mtp_logprobs.empty()) {
          // DeepSeek-V3's L_MTP = lambda / D * sum_k mean(-log p_k), here a mean over the batch's
          // completion tokens; the main hidden states enter detached, so the policy's gradient is GRPO's alone.
          Tensor nll;
          for (const auto& depth : out.mtp_logprobs)
            for (const Tensor& t : depth) nll = nll.defined() ? nll - t.sum() : -t.sum();
          nll = nll / ((double)out.mtp_logprobs.size() * std::max(1.0, total_tokens));
          pass_stats.mtp = scalars.add(nll);
          pass_stats.has_mtp = true;
          loss = loss + nll * s_.model.mtp_loss_weight;
        }
        loss.backward();
        stats.push_back(std::move(pass_stats));
      }
      // Into the fp32 master, or with per_pass onto the owners now: no full fp32 gradient on any rank.
      if (per_pass && overlap) u.grad_comm_overlap += overlap->finish() / (double)passes;
      else zero_->after_pass(pol_);
    }
    // The statistics of every pass, summed in pass order as doubles.
    const std::vector<double> v = scalars.read();
    double agree_sum = 0, agree_count = 0;
    for (const PassStats& p : stats) {
      const LossStats lo(&v[p.stats]);
      u.loss += v[p.loss] * p.w;
      u.clip_fraction += lo.clip_fraction * p.tw;
      u.clip_low += lo.clip_low_fraction * p.tw;
      u.clip_high += lo.clip_high_fraction * p.tw;
      u.kl += lo.kl * p.tw;
      if (lc.rollout_is != RolloutIs::Off) {
        u.is_ratio_mean += lo.is_ratio_mean * p.tw;
        u.is_clipped += lo.is_clipped_fraction * p.tw;
        u.is_ratio_min = std::min(u.is_ratio_min, lo.is_ratio_min);
        u.is_ratio_max = std::max(u.is_ratio_max, lo.is_ratio_max);
      }
      u.entropy += v[p.entropy] / std::max(1.0, total_tokens);
      if (it == 0) u.rollout_logprob_diff += v[p.diff] / std::max(1.0, total_tokens);
      for (size_t a : p.agree) agree_sum += v[a], agree_count += v[a + 1];
      if (p.has_aux) u.aux_loss += v[p.aux] * p.n / total_sequences;
      if (p.has_mtp) u.mtp_loss += v[p.mtp];
    }
    if (overlap && !per_pass) {  // replicas: the global batch's gradient everywhere, sent during the backward
      u.grad_comm_overlap = overlap->finish();
      u.grad_norm = torch::nn::utils::clip_grad_norm_(pol_.trainable_parameters(), s_.optim.max_grad_norm);
    } else {  // summed where the optimizer reads them (everywhere, or on their owners), clipped
      u.grad_norm = zero_->reduce_and_clip(pol_, s_.optim.max_grad_norm);
    }
    if (!std::isfinite(u.grad_norm) || !std::isfinite(u.loss))
      throw Error("step " + std::to_string(st_.step + 1) + ": the " + (std::isfinite(u.loss) ? "gradient norm" : "loss") +
                  " is not finite (loss " + std::to_string(u.loss) + ", gradient norm " + std::to_string(u.grad_norm) +
                  "); stopped before the update, so the weights and checkpoints so far are intact (lower learning_rate, "
                  "or resume from the last checkpoint)");
    optimizer_->step();
    // Under LoRA the whole base is frozen, the balancing bias included (checkpoints hold the adapters alone).
    if (it == 0 && want_routing && comm_) {  // expert loads over every rank's tokens
      for (auto& l : loads)
        if (!l.defined()) l = at::zeros({policy_->config().n_routed_experts}, at::TensorOptions(device_).dtype(at::kFloat));
      comm_->all_reduce_sum(loads);
    }
    if (it == 0 && agree_count > 0) u.routing_agreement = agree_sum / agree_count;
    if (it == 0 && !diffs.empty()) {  // the spread of this rank's per-token differences
      Tensor d = at::cat(diffs).masked_select(at::cat(diff_masks)).to(at::kCPU).to(at::kDouble);
      if (d.numel() > 0) {
        Tensor q = at::quantile(d, at::tensor({0.5, 0.99}, at::kDouble));
        u.rollout_logprob_diff_p50 = q[0].item<double>();
        u.rollout_logprob_diff_p99 = q[1].item<double>();
        u.rollout_logprob_diff_max = d.max().item<double>();
      }
      if (s_.rollout.exact_rollout && drawn_with_these_weights && u.rollout_logprob_diff_max > 0)
        log_->line("warning: step " + std::to_string(step) + ": exact_rollout's engine log-probs differ from the " +
                   "batch-invariant training forward's by up to " + std::to_string(u.rollout_logprob_diff_max) +
                   "; steps between checks take the engine's as the training forward's (exact_rollout_check_every: 1 " +
                   "recomputes them on every step)");
    }
    if (it == 0 && want_routing)
      u.expert_spread = update_routing_bias(*master_, loads, pol_.has_lora() ? 0.0 : s_.moe.bias_update_speed);
    zero_->share_weights(pol_);  // from their owners, rounded into the compute copy
  }
  return u;
}


}  // namespace grpo::trainer
