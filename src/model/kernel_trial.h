// Kernels on trial: a new kernel that has not yet been measured against the one it would replace
// runs only when named in the environment variable GRPO_KERNEL_TRIAL, a comma-separated list:
//   tall_tiles       the batch-invariant grouped products of decode in tiles of 32 or 64 rows of a
//                    group, where groups hold that many, through the decode kernel
//                    (invariant_kernels_cuda.h)
//   mla_decode_pipeline  the paged MLA decode kernel in its pipelined form: each warp's queries in
//                    registers, the score columns split over the warps, the key tiles' buffers
//                    refilled a barrier sooner (paged_mla_pipelined_cuda.cu)
//   expert_tiles     the routed experts' products of a decode step of more than 8 tokens through
//                    fused::grouped_tiles, instead of the grouped GEMM (moe.cpp; fused_kernels.h)
//   deep_rows        linear_rows with eight 16-byte pieces of the weight row in flight a lane,
//                    not four: a 2,048-wide row in one round trip (linear_rows_cuda.cu)
// so that one build measures both. Once measured, a kernel becomes the default or is dropped.
//
// Adopted kernels (they won their trial) run by default; the item "-name" turns one off, to
// compare it with what it replaced or to rule it out when a result looks wrong:
//   router           the router after its logits through fused::route (fused_kernels.h)
//   staged_tiles     decode's grouped products in tiles of 16, 32 or 64 rows of a group through the
//                    wide kernel, staged in shared memory (invariant_gemm_cuda.h)
//   narrow_columns   the batch-invariant products of a decode step's few rows in 8-column blocks,
//                    their loads eight chunks deep, where 32-column blocks would not fill the device
//   train_kernels    fused RMSNorm (forward and backward) and SwiGLU backward in training (train_kernels.h)
//   gather_combine   the routed experts' dispatch and combine in training as gathers through the
//                    pairs' permutation, forward and backward, instead of index_add (moe.cpp); on
//                    CUDA the combine with its routing weights and both sums one kernel each
//                    (train_kernels.h)
//   mla_assemble     MLA's query, key and value in training (RoPE, the concatenations, the
//                    shared key part for every head) one kernel forward and two backward, the
//                    same values (train_kernels.h)
//   fp32_products    the batch-invariant fp32 products (the router's logits, LoRA's side paths)
//                    spread over the device, the same bits (invariant_fp32_cuda.cu)
//   mla_decode_prologue  MLA's decode step between its projections and its attention (the latent's
//                    RMSNorm, both RoPE rotations, the cache write, the query's assembly) in one
//                    kernel where the chain runs seven, and its last product written in o_proj's
//                    order (deepseek.cpp, fused_kernels.h)
//   add_rms_norm     decode's residual adds each with the RMSNorm after it in one kernel
//                    (rollout/engine.cpp, fused_kernels.h)
//   packed_swiglu    SwiGLU forward and backward in 16-byte packs, a pack a thread, where the rows
//                    allow, rather than an element a thread: the same bits (row_vectors.cuh)
//   fused_sampler    the rollout engine's sampler without top-k or top-p in one kernel
//                    (rollout/sampling.cpp, fused_kernels.h)
//   linear_rows      the linear layers of a decode step of at most 8 rows (bf16) a warp an output
//                    column, instead of cuBLAS (linear.cpp), and the routed experts' products of
//                    at most 8 tokens likewise, instead of the grouped GEMM (moe.cpp; fused_kernels.h)
//   dependent_launch the few-row products (linear_rows) launched as dependents of the kernel before
//                    them (dependent_launch.cuh): their blocks start while it ends and ask for
//                    their weights before waiting for its output
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace grpo::model {

// Whether `kernel` is named in GRPO_KERNEL_TRIAL (read at each call: tests set it).
bool kernel_on_trial(std::string_view kernel);
// Whether an adopted `kernel` runs: unless GRPO_KERNEL_TRIAL names "-kernel".
bool kernel_adopted(std::string_view kernel);

// Sets GRPO_KERNEL_TRIAL to exactly `names` ("" for no trial, every adopted kernel on) for its
// lifetime, then restores the variable as it was: for tests and benchmarks that run the same work with and without.
class KernelTrialScope {
 public:
  explicit KernelTrialScope(const std::string& names);
  ~KernelTrialScope();
  KernelTrialScope(const KernelTrialScope&) = delete;
  KernelTrialScope& operator=(const KernelTrialScope&) = delete;

 private:
  std::optional<std::string> previous_;
};

}  // namespace grpo::model
