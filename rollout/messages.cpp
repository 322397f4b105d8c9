#include "rollout/messages.h"

namespace grpo::rollout {

SamplingParams from_proto(const pb::SamplingSettings& s) {
  SamplingParams p;
  p.n = s.n() == 0 ? 1 : s.n();
  p.temperature = s.temperature();
  p.top_p = s.top_p() == 0 ? 1.0 : s.top_p();
  p.top_k = s.top_k();
  p.max_new_tokens = s.max_new_tokens() == 0 ? 256 : s.max_new_tokens();
  p.stop_token_ids.assign(s.stop_token_ids().begin(), s.stop_token_ids().end());
  p.stop_strings.assign(s.stop_strings().begin(), s.stop_strings().end());
  p.seed = s.seed();
  return p;
}

void to_proto(const SamplingParams& p, bool ignore_eos, pb::SamplingSettings* s) {
  s->set_n(p.n);
  s->set_temperature(p.temperature);
  s->set_top_p(p.top_p);
  s->set_top_k(p.top_k);
  s->set_max_new_tokens(p.max_new_tokens);
  for (auto t : p.stop_token_ids) s->add_stop_token_ids(t);
  for (const auto& t : p.stop_strings) s->add_stop_strings(t);
  s->set_seed(p.seed);
  s->set_ignore_eos(ignore_eos);
}

void to_proto(const ServerInfo& i, pb::InfoReply* r) {
  r->set_model_dir(i.model_dir);
  r->set_model_type(i.model_type);
  r->set_vocab_size(i.vocab_size);
  r->set_max_context(i.max_context);
  r->set_has_tokenizer(i.has_tokenizer);
  r->set_weight_version(i.weight_version);
  r->set_device(i.device);
  r->set_dtype(i.dtype);
  r->set_max_batch(i.max_batch);
  r->set_kv_cache_blocks(i.kv_cache_blocks);
  r->set_block_size(i.block_size);
  r->set_running(i.running);
  r->set_waiting(i.waiting);
  r->set_eos_token_id(i.eos_token_id);
}

ServerInfo from_proto(const pb::InfoReply& r) {
  ServerInfo i;
  i.model_dir = r.model_dir();
  i.model_type = r.model_type();
  i.vocab_size = r.vocab_size();
  i.max_context = r.max_context();
  i.has_tokenizer = r.has_tokenizer();
  i.weight_version = r.weight_version();
  i.device = r.device();
  i.dtype = r.dtype();
  i.max_batch = r.max_batch();
  i.kv_cache_blocks = r.kv_cache_blocks();
  i.block_size = r.block_size();
  i.running = r.running();
  i.waiting = r.waiting();
  i.eos_token_id = r.eos_token_id();
  return i;
}

std::string over_limit(const pb::GenerateRequest& req, const ServerLimits& L) {
  const auto& s = req.sampling();
  const int64_t n = s.n() == 0 ? 1 : s.n(), prompts = req.prompts_size();
  auto says = [](const std::string& what, int64_t got, const char* flag, int64_t limit) {
    return what + " = " + std::to_string(got) + " is more than this server allows (" + flag + " " +
           std::to_string(limit) + ")";
  };
  if (n > L.max_samples) return says("n", n, "--max-samples", L.max_samples);
  if (prompts > L.max_prompts) return says("prompts per call", prompts, "--max-prompts", L.max_prompts);
  if (n >= 1 && n * prompts > L.max_total_samples)  // both bounded: no overflow (n < 1 is the engine's error)
    return says("samples per call", n * prompts, "--max-total-samples", L.max_total_samples);
  if (L.max_new_tokens > 0 && s.max_new_tokens() > L.max_new_tokens)
    return says("max_new_tokens", s.max_new_tokens(), "--max-new-tokens", L.max_new_tokens);
  for (const auto& p : req.prompts())
    if ((int64_t)p.text().size() > L.max_prompt_bytes)
      return "prompt " + std::to_string(p.prompt_index()) + ": " +
             says("text bytes", (int64_t)p.text().size(), "--max-prompt-bytes", L.max_prompt_bytes);
  return "";
}

std::vector<PromptInput> prompts_from_proto(const pb::GenerateRequest& req) {
  std::vector<PromptInput> prompts;
  for (const auto& p : req.prompts()) {
    PromptInput in;
    in.prompt_index = p.prompt_index();
    if (p.input_case() == pb::Prompt::kText) {
      in.is_text = true;
      in.text = p.text();
    } else {
      in.ids.assign(p.token_ids().ids().begin(), p.token_ids().ids().end());
    }
    prompts.push_back(std::move(in));
  }
  return prompts;
}

}  // namespace grpo::rollout
