// The rollout scheduler without a model: a driver plays the engine (prefill, copy the partial
// block, decode, sample from a fixed rule) and checks at every step that no two sequences write to
// one block, that every write lands in the sequence's own table, that slots and prefill limits
// hold, that each sample finishes exactly once with the tokens the rule dictates, and that every
// block comes back.
#include "rollout/scheduler.h"

#include <gtest/gtest.h>

#include <limits>
#include <map>
#include <random>
#include <set>

#include "util/error.h"

using namespace grpo::rollout;

namespace {

// The "model": sample s of prompt p draws token j = (p * 31 + s * 7 + j * 3) % 50; 49 is the stop token.
int64_t rule(int64_t prompt, int64_t sample, int64_t j) { return (prompt * 31 + sample * 7 + j * 3) % 50; }

Request request(int64_t index, int64_t prompt_len, int64_t n, int64_t max_new) {
  Request r;
  r.prompt_index = index;
  for (int64_t t = 0; t < prompt_len; ++t) r.prompt_ids.push_back(t % 50);
  r.params.n = n;
  r.params.max_new_tokens = max_new;
  r.params.stop_token_ids = {49};
  return r;
}

std::vector<int64_t> expected_tokens(const Request& r, int64_t sample, int64_t max_context) {
  std::vector<int64_t> out;
  const int64_t max_new = std::min<int64_t>(r.params.max_new_tokens, max_context - (int64_t)r.prompt_ids.size());
  for (int64_t j = 0; j < max_new; ++j) {
    out.push_back(rule(r.prompt_index, sample, j));
    if (out.back() == 49) break;
  }
  return out;
}

struct Played {
  std::vector<Completion> done;
  int64_t max_running = 0, prefills = 0, max_groups_per_prefill = 0;
};

// Plays the engine until idle, checking the scheduler's invariants as it goes.
Played drive(Scheduler& sched, const SchedulerLimits& lim, const std::vector<Request>& reqs) {
  for (const auto& r : reqs) sched.add(r);
  Played run;
  auto first_tokens = [&]() {
    std::vector<BlockCopy> copies;
    std::vector<Sequence*> fresh = sched.start_samples(&copies);
    size_t c = 0;
    std::vector<int64_t> tok;
    for (Sequence* s : fresh) {
      const int64_t P = s->group->prompt_len();
      EXPECT_EQ((int64_t)s->table.size(), (P + (P % lim.block_size ? lim.block_size : 0)) / lim.block_size);
      if (P % lim.block_size) {  // the copy goes from the prompt's partial block into the sample's own
        EXPECT_EQ(copies.at(c).from, s->group->blocks.back());
        EXPECT_EQ(copies.at(c).to, s->table.back());
        ++c;
      }
      tok.push_back(rule(s->group->req.prompt_index, s->sample, 0));
    }
    EXPECT_EQ(c, copies.size());
    sched.advance(fresh, tok, std::vector<float>(fresh.size(), -1.0f), run.done);
  };
  for (int guard = 0; !sched.idle(); ++guard) {
    if (guard > 100000) {
      ADD_FAILURE() << "the scheduler never became idle";
      break;
    }
    first_tokens();
    for (;;) {
      std::vector<Group*> batch = sched.admit(0);
      if (batch.empty()) break;
      run.prefills += 1;
      run.max_groups_per_prefill = std::max<int64_t>(run.max_groups_per_prefill, batch.size());
      int64_t longest = 0;
      for (Group* g : batch) longest = std::max(longest, g->prompt_len());
      if (batch.size() > 1) {
        EXPECT_LE(longest * (int64_t)batch.size(), lim.max_prefill_tokens);
      }
      first_tokens();
    }
    sched.grow();
    const std::vector<Sequence*> seqs = sched.running();
    run.max_running = std::max<int64_t>(run.max_running, seqs.size());
    EXPECT_LE((int64_t)seqs.size(), lim.max_batch);
    // Each sequence writes its last token at position() of its own table; no block is written by two.
    std::set<int32_t> written_blocks;
    std::vector<int64_t> tok;
    for (const Sequence* s : seqs) {
      const int64_t pos = s->position();
      if (pos / lim.block_size >= (int64_t)s->table.size()) {
        ADD_FAILURE() << "position " << pos << " is past the block table";
        return run;
      }
      const int32_t block = s->table[pos / lim.block_size];
      EXPECT_TRUE(written_blocks.insert(block).second) << "block " << block << " written by two sequences";
      EXPECT_GE(pos, s->group->prompt_len() - s->group->prompt_len() % lim.block_size)
          << "a sequence writes into a shared prompt block";
      tok.push_back(rule(s->group->req.prompt_index, s->sample, (int64_t)s->tokens.size()));
    }
    // A sequence's own blocks are its alone, and never a prompt's shared block.
    std::set<int32_t> own, shared;
    for (const Sequence* s : seqs) {
      const size_t k = s->group->prompt_len() / lim.block_size;
      for (size_t i = 0; i < s->table.size(); ++i) {
        if (i < k) {
          shared.insert(s->table[i]);
        } else {
          EXPECT_TRUE(own.insert(s->table[i]).second) << "block " << s->table[i] << " owned twice";
        }
      }
    }
    for (int32_t b : shared) EXPECT_EQ(own.count(b), 0u) << "shared prompt block " << b << " also owned";
    sched.advance(seqs, tok, std::vector<float>(seqs.size(), -1.0f), run.done);
  }
  return run;
}

}  // namespace

TEST(Scheduler, EverySampleFinishesOnceWithItsTokensAndEveryBlockComesBack) {
  std::mt19937 rng(5);
  for (int64_t bs : {1, 4, 16}) {
    SchedulerLimits lim{/*max_batch=*/7, /*max_prefill_tokens=*/40, bs, /*max_context=*/60};
    std::vector<Request> reqs;
    for (int64_t i = 0; i < 25; ++i)
      reqs.push_back(request(i, 1 + rng() % 30, 1 + rng() % 5, 1 + rng() % 40));
    int64_t need = 0;
    for (const auto& r : reqs) need = std::max(need, Scheduler(lim, 1, nullptr).blocks_needed(r));
    Scheduler sched(lim, 3 * need, nullptr);  // tight: a few groups at a time
    Played run = drive(sched, lim, reqs);
    std::map<std::pair<int64_t, int64_t>, int> seen;
    for (const auto& c : run.done) {
      seen[std::make_pair(c.prompt_index, c.sample_index)] += 1;
      const auto& r = reqs.at(c.prompt_index);
      EXPECT_EQ(c.token_ids, expected_tokens(r, c.sample_index, lim.max_context));
      EXPECT_EQ(c.logprobs.size(), c.token_ids.size());
      EXPECT_EQ(c.finish_reason, c.token_ids.back() == 49 ? FinishReason::Stop : FinishReason::Length);
      EXPECT_EQ(c.request_id, (uint64_t)c.prompt_index + 1);
    }
    int64_t samples = 0;
    for (const auto& r : reqs) samples += r.params.n;
    EXPECT_EQ((int64_t)seen.size(), samples) << "block size " << bs;
    for (const auto& [key, count] : seen) EXPECT_EQ(count, 1);
    EXPECT_EQ(sched.finished(), samples);
    EXPECT_EQ(sched.blocks().free(), sched.blocks().usable()) << "blocks leaked, block size " << bs;
    EXPECT_EQ(sched.blocks().reserved(), 0);
    EXPECT_LE(sched.blocks().peak_used(), sched.blocks().usable());
    EXPECT_EQ(run.max_running, lim.max_batch) << "slots were left idle";
    EXPECT_GT(run.max_groups_per_prefill, 1) << "prompts were never prefilled together";
  }
}

TEST(Scheduler, APromptWaitsUntilTheCacheHoldsAllItsSamples) {
  SchedulerLimits lim{/*max_batch=*/64, /*max_prefill_tokens=*/1000, /*block_size=*/4, /*max_context=*/100};
  Request r = request(0, 8, 4, 8);  // 2 prompt blocks + 4 x 2 own blocks (8 + 8 - 1 tokens: 4 blocks, 2 shared)
  Scheduler probe(lim, 1, nullptr);
  ASSERT_EQ(probe.blocks_needed(r), 10);
  Scheduler sched(lim, 15, nullptr);  // one group fits, not two
  Request r1 = request(1, 8, 4, 8);
  sched.add(r);
  sched.add(r1);
  std::vector<Group*> batch = sched.admit(3);
  ASSERT_EQ(batch.size(), 1u);
  EXPECT_EQ(batch[0]->weight_version, 3);
  EXPECT_EQ(sched.blocks().available(), 5);
  EXPECT_TRUE(sched.admit(3).empty()) << "the second prompt was admitted without the cache to finish";
  EXPECT_EQ(sched.waiting_prompts(), 1);
  EXPECT_EQ(sched.unstarted_samples(), 4);
  // The first group's samples all stop on their first token: everything comes back, and the second fits.
  std::vector<BlockCopy> copies;
  std::vector<Sequence*> fresh = sched.start_samples(&copies);
  ASSERT_EQ(fresh.size(), 4u);
  EXPECT_TRUE(copies.empty());  // the prompt fills its blocks exactly: nothing to copy
  std::vector<Completion> done;
  sched.advance(fresh, {49, 49, 49, 49}, {0, 0, 0, 0}, done);
  EXPECT_EQ(done.size(), 4u);
  EXPECT_EQ(sched.blocks().free(), 15);
  EXPECT_EQ(sched.admit(4).size(), 1u);
}

TEST(Scheduler, SamplesStartOnlyIntoFreeSlots) {
  SchedulerLimits lim{/*max_batch=*/3, /*max_prefill_tokens=*/1000, /*block_size=*/4, /*max_context=*/100};
  Scheduler sched(lim, 100, nullptr);
  sched.add(request(0, 5, 5, 10));
  sched.add(request(1, 5, 1, 10));
  ASSERT_EQ(sched.admit(0).size(), 1u);  // five samples for three slots: the next prompt waits
  EXPECT_TRUE(sched.admit(0).empty()) << "a prompt was prefilled with no slot free for its samples";
  std::vector<BlockCopy> copies;
  std::vector<Sequence*> fresh = sched.start_samples(&copies);
  EXPECT_EQ(fresh.size(), 3u);
  EXPECT_EQ(copies.size(), 3u);  // a 5-token prompt leaves a partial block for each sample
  EXPECT_THROW(sched.start_samples(&copies), grpo::Error);  // first tokens pending
  std::vector<Completion> done;
  sched.advance(fresh, {1, 49, 1}, {0, 0, 0}, done);
  EXPECT_EQ(sched.running().size(), 2u);
  EXPECT_EQ(sched.unstarted_samples(), 2);
  copies.clear();
  fresh = sched.start_samples(&copies);
  ASSERT_EQ(fresh.size(), 1u);
  EXPECT_EQ(fresh[0]->sample, 3);
  EXPECT_THROW(sched.advance(fresh, {1, 2}, {0, 0}, done), grpo::Error);
}

TEST(Scheduler, LengthIsClampedToTheContext) {
  SchedulerLimits lim{/*max_batch=*/4, /*max_prefill_tokens=*/1000, /*block_size=*/4, /*max_context=*/12};
  Scheduler sched(lim, 100, nullptr);
  Request r = request(2, 10, 1, 50);
  EXPECT_EQ(sched.max_new_tokens(r), 2);
  Played run = drive(sched, lim, {r});
  ASSERT_EQ(run.done.size(), 1u);
  EXPECT_EQ(run.done[0].token_ids.size(), 2u);
  EXPECT_EQ(run.done[0].finish_reason, FinishReason::Length);
}

TEST(Scheduler, CancelledRequestsGiveEverythingBackAndEndSilently) {
  SchedulerLimits lim{/*max_batch=*/4, /*max_prefill_tokens=*/1000, /*block_size=*/4, /*max_context=*/100};
  Scheduler sched(lim, 200, nullptr);
  uint64_t a = sched.add(request(0, 6, 3, 30));  // will run, then be cancelled mid-way
  uint64_t b = sched.add(request(1, 5, 2, 30));  // runs to the end
  uint64_t c = sched.add(request(2, 7, 4, 30));  // cancelled while waiting
  std::vector<Completion> done;
  auto first = [&] {
    std::vector<BlockCopy> copies;
    auto fresh = sched.start_samples(&copies);
    std::vector<int64_t> tok(fresh.size(), 1);
    sched.advance(fresh, tok, std::vector<float>(fresh.size(), 0), done);
  };
  first();
  ASSERT_EQ(sched.admit(0).size(), 2u);  // a and b: 5 samples for 4 slots, c waits
  first();
  EXPECT_EQ(sched.running().size(), 4u);
  for (int step = 0; step < 3; ++step) {
    sched.grow();
    auto seqs = sched.running();
    sched.advance(seqs, std::vector<int64_t>(seqs.size(), 1), std::vector<float>(seqs.size(), 0), done);
  }
  EXPECT_TRUE(sched.cancel(a));
  EXPECT_TRUE(sched.cancel(c));
  EXPECT_FALSE(sched.cancel(a));  // already gone
  EXPECT_EQ(sched.waiting_prompts(), 0);
  for (const Sequence* s : sched.running()) EXPECT_EQ(s->group->id, b);
  for (int guard = 0; !sched.idle() && guard < 100; ++guard) {
    first();
    while (!sched.admit(0).empty()) first();
    sched.grow();
    auto seqs = sched.running();
    sched.advance(seqs, std::vector<int64_t>(seqs.size(), 1), std::vector<float>(seqs.size(), 0), done);
  }
  ASSERT_TRUE(sched.idle());
  EXPECT_EQ(done.size(), 2u);
  for (const auto& d : done) EXPECT_EQ(d.request_id, b);
  EXPECT_EQ(sched.blocks().free(), sched.blocks().usable());
  EXPECT_EQ(sched.blocks().reserved(), 0);
}

TEST(Scheduler, HugeRequestsDoNotOverflowTheCacheCheck) {
  SchedulerLimits lim{/*max_batch=*/4, /*max_prefill_tokens=*/1000, /*block_size=*/16, /*max_context=*/4096};
  Scheduler sched(lim, 100, nullptr);
  Request r = request(0, 10, int64_t(1) << 62, 1000);
  EXPECT_EQ(sched.blocks_needed(r), std::numeric_limits<int64_t>::max());
  r.params.n = std::numeric_limits<int64_t>::max();
  EXPECT_EQ(sched.blocks_needed(r), std::numeric_limits<int64_t>::max());
}
