// Fuzz target: a reward worker's Score call as a client could send it (any bytes that parse as a
// ScoreRequest): the spec against what the worker serves, the combination it builds, and every
// item's metadata and scoring, through ScoreCalls as the worker runs it. The worker serves every
// built-in reward except the code rewards (those run programs: the sandbox's own tests cover them).
#include <google/protobuf/stubs/logging.h>

#include <cstdint>

#include "rewards/builtin.h"
#include "rewards/score_calls.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);  // proto3's "invalid UTF-8" lines, one per such input
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static grpo::rewards::ScoreCalls calls(grpo::rewards::default_registry(),
                                         "math,format:0.2,tag_count,overlong,language_consistency,repetition");
  grpo::v1::ScoreRequest req;
  if (!req.ParseFromArray(data, (int)size)) return 0;
  grpo::v1::ScoreReply reply;
  grpc::Status s = calls.score(req, &reply);
  if (s.ok() && reply.results_size() != req.items_size()) __builtin_trap();  // one result per item, always
  return 0;
}
