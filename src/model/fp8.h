// FP8 (e4m3) weights for the rollout engine's matrix products.
//
// The dense projections follow DeepSeek-V3's recipe: each weight W (N, K) is stored as e4m3
// values and one fp32 scale per 128 x 128 block, W ~ q * s with s = amax(block) / 448; the
// activations are quantized on the fly, one scale per row and 128 columns; the product
// accumulates in fp32 and is rounded once to the model dtype (`at::_scaled_mm`, Hopper GPUs).
// The routed experts use the form the grouped FP8 product offers on Hopper: one scale per
// expert output row (over all of K) and one per token (`at::_scaled_grouped_mm`).
//
// The copies live beside the bf16 parameters (LinearImpl::fp8, RoutedExpertsImpl::fp8_*); the
// policy's own weights are never changed and training never reads the copies. A layer takes its
// FP8 copy only inside an fp8::Scope (the rollout engine opens one around its forwards), so the
// same module serves the FP8 rollout and the bf16 training forward. Left in the model dtype: the
// output projection (log-probs), the MTP module's output head, kv_b_proj (the absorbed MLA decode
// reads its bf16 weight directly) and layers whose sizes are not multiples of 16.
//
// Off Hopper (CPU, other GPUs) the same arithmetic runs as an emulation: the quantized values and
// scales are expanded to fp32 and multiplied, which is what the FP8 kernels compute up to the
// order of their fp32 sums. It serves the tests and CPU runs; it is not faster than bf16.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <utility>

#include "util/scoped_flag.h"

namespace grpo::model::fp8 {

using at::Tensor;

constexpr int64_t kBlock = 128;  // block side of the weight scales, group of the activation scales
constexpr double kMax = 448.0;   // largest finite e4m3 value
// cuBLAS's block-scaled product on Hopper wants the scales' leading dimensions 16-byte aligned:
// the 128-column groups of K a multiple of 4 (else it returns wrong sums, unchecked), the rows of
// the activations a multiple of 4 (else it refuses). Block-scaled weights are stored with K padded
// by zero columns to a multiple of 512, and the activations padded to match.
constexpr int64_t kPadCols = 4 * kBlock;
constexpr int64_t kPadRows = 4;

// A weight (N, K) in e4m3 and its scales. Blocks: q (N, Kp) with Kp = K rounded up to 512 (zero
// columns), scales (ceil(N/128), Kp/128). Rows: q (N, K), scales (N). The routed experts' stacks
// carry a leading expert dimension on both. `cols` is K.
struct Weight {
  Tensor q, scale;
  int64_t cols = 0;
  bool defined() const { return q.defined(); }
};

// Block quantization of a weight (N, K) or a stack (E, N, K) into `out`, whose tensors are
// allocated by the first call and overwritten in place by later ones (the CUDA graphs that read
// them stay valid). `rows`: one scale per output row instead of per 128 x 128 block.
void quantize_weight(const Tensor& w, Weight& out, bool rows = false);

// Activations (M, K) -> e4m3 and scales. Group 128: the input is taken as zero-padded to
// (Mp, Kp), Mp = M rounded up to `row_multiple`, Kp = max(K, cols) (a multiple of 128 when above
// K), giving q (Mp, Kp) and scales (Mp, ceil(Kp/128)) in the layout `_scaled_mm` asks for (Mp
// contiguous: strides (1, Mp)). Group 0: q (M, K) and one scale per row, (M).
// s = amax / 448 (1 for an all-zero group), q = x / s rounded to nearest. On CUDA one kernel.
std::pair<Tensor, Tensor> quantize_activations(const Tensor& x, int64_t group, int64_t cols = 0, int64_t row_multiple = 1);

// The same in ATen operations: the reference the CUDA kernel equals bit for bit.
std::pair<Tensor, Tensor> quantize_activations_reference(const Tensor& x, int64_t group, int64_t cols = 0,
                                                         int64_t row_multiple = 1);

// Dequantized fp32 copy of a quantized weight, (N, K) (or (E, N, K)).
Tensor dequantize(const Weight& w, bool rows = false);

// y = x W^T (+ bias) with x quantized per 1 x 128 and W per 128 x 128, rounded to `out_dtype`.
// x (..., K) in the model dtype.
Tensor linear(const Tensor& x, const Weight& w, const Tensor& bias, at::ScalarType out_dtype);

// Routed experts: rows `x` (T, K) sorted by expert, `counts` (E) int64 rows per expert, `w` the
// stack (E, N, K) with per-row scales (E, N) -> (T, N) in x's dtype. No host synchronisation on
// Hopper (the grouped FP8 product reads the offsets on the device).
Tensor grouped(const Tensor& x, const Weight& w, const Tensor& counts);

// Whether this device runs the FP8 kernels (compute capability 9.x; `_scaled_mm`'s block scales
// exist on Hopper only); elsewhere the emulation runs.
bool native(const at::Device& device);

// Layers use their FP8 copies only while a Scope with `on` is alive on this thread.
using Scope = ScopedFlag<struct Fp8Tag>;
inline bool active() { return Scope::on(); }

// Gives every eligible layer of `model` its FP8 copy (allocated on the first call) and fills it
// from the current weights (LoRA adapters merged). Call again after the weights change. Returns
// the bytes the copies hold.
int64_t quantize_model(torch::nn::Module& model);
// Number of layers holding an FP8 copy (linear layers + routed-expert stacks).
int64_t quantized_layers(torch::nn::Module& model);

}  // namespace grpo::model::fp8
