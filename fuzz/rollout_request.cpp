// Fuzz target: a rollout server's Generate call as a client could send it (any bytes that parse as
// a GenerateRequest): the server's limits, the conversion to engine requests (text prompts through
// a byte-level tokenizer), the engine's checks, and then the scheduler playing the whole request
// to the end with a model that draws tokens by a fixed rule (stop ids and stop strings included),
// checking that every admitted sample finishes exactly once and every cache block comes back.
#include <google/protobuf/stubs/logging.h>

#include <cstdint>
#include <map>

#include "rollout/messages.h"
#include "rollout/scheduler.h"
#include "text/tokenizer.h"
#include "util/error.h"

using namespace grpo::rollout;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);  // proto3's "invalid UTF-8" lines, one per such input
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto tok = grpo::text::Tokenizer::byte_level();
  const int64_t vocab = tok.vocab_size();
  grpo::v1::GenerateRequest req;
  if (!req.ParseFromArray(data, (int)size)) return 0;
  ServerLimits limits;  // small enough that one input plays out in milliseconds
  limits.max_samples = 16;
  limits.max_prompts = 16;
  limits.max_total_samples = 64;
  limits.max_prompt_bytes = 512;
  if (!over_limit(req, limits).empty()) return 0;

  const SchedulerLimits sl{/*max_batch=*/8, /*max_prefill_tokens=*/256, /*block_size=*/4, /*max_context=*/64};
  const int64_t usable = 96;
  Scheduler sched(sl, usable, &tok);
  const SamplingParams params = from_proto(req.sampling());
  std::map<uint64_t, int64_t> expected;  // request id -> samples
  int64_t i = 0;
  for (const PromptInput& p : prompts_from_proto(req)) {
    Request r;
    r.prompt_index = p.prompt_index;
    r.params = params;
    if (p.is_text) {
      for (int id : tok.encode(p.text)) r.prompt_ids.push_back(id);
    } else {
      r.prompt_ids = p.ids;
    }
    try {
      sched.check(r, vocab, limits.max_samples, "prompt " + std::to_string(i++));
    } catch (const grpo::Error&) {
      continue;
    }
    const int64_t n = r.params.n;
    expected[sched.add(std::move(r))] = n;
  }
  // Play the engine: the token of step j of a sequence is (seed + prompt + 7 * sample + 3 * j) % vocab.
  std::vector<Completion> done;
  const uint64_t seed = req.sampling().seed();
  auto token = [&](const Sequence* s) {
    return int64_t((seed + (uint64_t)s->group->prompt_len() + 7 * (uint64_t)s->sample + 3 * s->tokens.size()) %
                   (uint64_t)vocab);
  };
  for (int guard = 0; !sched.idle(); ++guard) {
    if (guard > 100000) __builtin_trap();  // the schedule must make progress
    sched.admit(0);
    std::vector<BlockCopy> copies;
    std::vector<Sequence*> fresh = sched.start_samples(&copies);
    if (!fresh.empty()) {
      std::vector<int64_t> t;
      for (auto* s : fresh) t.push_back(token(s));
      sched.advance(fresh, t, std::vector<float>(fresh.size(), -1.f), done);
    }
    sched.grow();
    std::vector<Sequence*> run = sched.running();
    if (!run.empty()) {
      std::vector<int64_t> t;
      for (auto* s : run) t.push_back(token(s));
      sched.advance(run, t, std::vector<float>(run.size(), -1.f), done);
    }
  }
  std::map<uint64_t, int64_t> got;
  for (const auto& c : done) ++got[c.request_id];
  if (got != expected) __builtin_trap();                  // every sample of every admitted request, once
  if (sched.blocks().free() != usable) __builtin_trap();  // every block back
  return 0;
}
