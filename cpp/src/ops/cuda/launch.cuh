#pragma once
// Launch helpers shared by the lunakit CUDA kernels: 1D grid-stride launches on the current
// stream of the guarded device, each checked.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>

namespace lunakit::ops::cuda {

constexpr int kThreads = 256;

// Blocks for n work items; kernels loop grid-stride, so the grid is capped.
inline unsigned int blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::clamp<int64_t>(blocks, 1, int64_t{1} << 20));
}

// First item and stride of a grid-stride loop, in int64.
__device__ __forceinline__ int64_t grid_first() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

}  // namespace lunakit::ops::cuda
