// binary_erode on CUDA: one thread per voxel (the same erode_voxel as the host twin).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../ops.h"
#include "../voxel_kernels.h"
#include "launch.cuh"

namespace lunakit::ops::detail {
namespace {

using namespace lunakit::ops::cuda;  // blocks_for, grid_first, grid_stride, kThreads

__global__ void erode_kernel(const bool* __restrict__ mask, Dims d, bool* __restrict__ out) {
  const int64_t n = d.numel();
  for (int64_t idx = grid_first(); idx < n; idx += grid_stride()) {
    const int64_t c = idx % d.c, t = idx / d.c;
    out[idx] = erode_voxel(mask, d, t / d.r, t % d.r, c);
  }
}

at::Tensor binary_erode_cuda(const at::Tensor& mask) {
  check_mask(mask, "binary_erode");
  TORCH_CHECK_VALUE(mask.is_cuda(), "binary_erode: expected a CUDA tensor, got ", mask.device());
  const c10::cuda::CUDAGuard guard(mask.device());
  const at::Tensor m = mask.contiguous();
  at::Tensor out = at::empty(m.sizes(), m.options());  // (I, R, C) bool
  const Dims d{m.size(0), m.size(1), m.size(2)};
  if (d.numel() == 0) return out;
  erode_kernel<<<blocks_for(d.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(m.data_ptr<bool>(), d,
                                                                                         out.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace lunakit::ops::detail

TORCH_LIBRARY_IMPL(lunakit, CUDA, m) { m.impl("binary_erode", &lunakit::ops::detail::binary_erode_cuda); }
