// The rollout service's messages (proto/grpo.proto) to and from the plain types of rollout/rpc.h,
// and the server's limits on one Generate call. Torch-free; includes the generated header, so only
// torch-free code includes it (build rule 1).
#pragma once

#include <string>
#include <vector>

#include "grpo.pb.h"
#include "rollout/rpc.h"

namespace grpo::rollout {

namespace pb = grpo::v1;

// Unset fields take the server's defaults: n 1, top_p 1, max_new_tokens 256.
SamplingParams from_proto(const pb::SamplingSettings& s);
void to_proto(const SamplingParams& p, bool ignore_eos, pb::SamplingSettings* s);
void to_proto(const ServerInfo& i, pb::InfoReply* r);
ServerInfo from_proto(const pb::InfoReply& r);
// The prompts of a call, as text or token ids, in the order sent.
std::vector<PromptInput> prompts_from_proto(const pb::GenerateRequest& req);

// The first limit `req` goes past, as a message naming it; "" when within all.
std::string over_limit(const pb::GenerateRequest& req, const ServerLimits& L);

}  // namespace grpo::rollout
