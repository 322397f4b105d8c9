// Programmatic dependent launch (Hopper; adopted, "dependent_launch"): a kernel launched as a
// dependent may start while the kernel before it on the stream is still running, so that a decode
// step's small kernels do not each wait out the one before them to be launched and to ramp up.
// Such a kernel reads nothing the kernels before it write until it has called wait_for_inputs()
// (it may read the weights before), and a kernel lets its dependents be scheduled once it has
// called let_dependents_start(). Both are no-ops where the launch was an ordinary one, and before
// Hopper. Inside a CUDA graph capture the dependency becomes a programmatic edge of the graph.
#pragma once

#include <cuda_runtime.h>

namespace grpo::model::dependent_launch {

// Waits until every kernel this one depends on has finished and its writes are visible.
__device__ __forceinline__ void wait_for_inputs() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the kernel launched after this one as a dependent start its blocks now.
__device__ __forceinline__ void let_dependents_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...), as a dependent of the kernel before it where
// `dependent` is set. Returns the launch's error (also left for cudaGetLastError).
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool dependent,
                   Args... args) {
  if (!dependent) {
    kernel<<<grid, block, smem, stream>>>(args...);
    return cudaPeekAtLastError();
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

}  // namespace grpo::model::dependent_launch
