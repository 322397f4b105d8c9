// RoPE's rotation on the device with the roundings of apply_rope's ATen chain (model/layers.h), and
// the rotation's backward with those of autograd's chain through it: every product and every sum
// rounded to T, no fused multiply-add. Shared by the fused inference kernel and the training kernels.
#pragma once

namespace grpo::model {

// One rounding to T, as ATen rounds a result of T's arithmetic (none for float).
template <typename T>
__device__ __forceinline__ float rope_round(float v) {
  return (float)(T)v;
}

// The pair (x1, x2) rotated by (c, s): its first output x1 c - x2 s, or its second x2 c + x1 s.
template <typename T>
__device__ __forceinline__ T rope_rotate(float x1, float x2, float c, float s, bool second) {
  if (!second) return (T)__fsub_rn(rope_round<T>(__fmul_rn(x1, c)), rope_round<T>(__fmul_rn(x2, s)));
  return (T)__fadd_rn(rope_round<T>(__fmul_rn(x2, c)), rope_round<T>(__fmul_rn(x1, s)));
}

// The gradient of x1 (or, `second`, of x2) from the outputs' gradients (dy1, dy2): dy1 c + dy2 s, or
// dy2 c - dy1 s (autograd's chain negates dy1 for the subtraction, which rounds alike).
template <typename T>
__device__ __forceinline__ T rope_rotate_grad(float dy1, float dy2, float c, float s, bool second) {
  if (!second) return (T)__fadd_rn(rope_round<T>(__fmul_rn(dy1, c)), rope_round<T>(__fmul_rn(dy2, s)));
  return (T)__fsub_rn(rope_round<T>(__fmul_rn(dy2, c)), rope_round<T>(__fmul_rn(dy1, s)));
}

}  // namespace grpo::model
