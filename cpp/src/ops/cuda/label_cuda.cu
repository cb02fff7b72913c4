// label_components on CUDA: union-find over voxels, then ranking of the roots.
//
//   init     parent[v] = v for foreground, -1 for background        (one thread per voxel)
//   merge    unite v with each foreground backward neighbor: the larger root is hooked
//            under the smaller with atomicMin, retried when it lost a race
//   flatten  parent[v] = root(v); every root is its component's smallest linear index
//   rank     inclusive prefix sum of "v is a root": roots in linear-index order are the
//            components' first voxels in raster order, so rank[root] is scipy's label
//   relabel  labels[v] = rank[parent[v]]
// The result does not depend on the order threads run in. The parent array is the output
// tensor itself; relabel overwrites it in place (each thread reads only its own entry).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "../ops.h"
#include "../voxel_kernels.h"
#include "launch.cuh"

namespace lunakit::ops::detail {
namespace {

using namespace lunakit::ops::cuda;  // blocks_for, grid_first, grid_stride, kThreads

__global__ void init_kernel(const bool* __restrict__ mask, int32_t* parent, int64_t n) {
  for (int64_t idx = grid_first(); idx < n; idx += grid_stride()) label_init_voxel(mask, parent, idx);
}

template <int Connectivity>
__global__ void merge_kernel(const bool* __restrict__ mask, int32_t* parent, Dims d) {
  const int64_t n = d.numel();
  for (int64_t idx = grid_first(); idx < n; idx += grid_stride()) {
    const int64_t c = idx % d.c, t = idx / d.c;
    label_merge_voxel(mask, parent, d, Connectivity, t / d.r, t % d.r, c);
  }
}

__global__ void flatten_kernel(int32_t* parent, int64_t n) {
  for (int64_t idx = grid_first(); idx < n; idx += grid_stride()) label_flatten_voxel(parent, idx);
}

__global__ void root_flag_kernel(const int32_t* __restrict__ parent, int32_t* __restrict__ flags, int64_t n) {
  for (int64_t idx = grid_first(); idx < n; idx += grid_stride()) flags[idx] = label_root_flag(parent, idx);
}

__global__ void relabel_kernel(int32_t* parent, const int32_t* __restrict__ root_rank, int64_t n) {
  for (int64_t idx = grid_first(); idx < n; idx += grid_stride())
    parent[idx] = label_final_voxel(parent, root_rank, idx);
}

std::tuple<at::Tensor, c10::SymInt> label_components_cuda(const at::Tensor& mask, int64_t connectivity) {
  check_label_components(mask, connectivity);
  TORCH_CHECK_VALUE(mask.is_cuda(), "label_components: expected a CUDA tensor, got ", mask.device());
  const c10::cuda::CUDAGuard guard(mask.device());
  const at::Tensor m = mask.contiguous();
  at::Tensor labels = at::empty(m.sizes(), m.options().dtype(at::kInt));  // (I, R, C) int32, first the parents
  const Dims d{m.size(0), m.size(1), m.size(2)};
  const int64_t n = d.numel();
  if (n == 0) return {labels, c10::SymInt(0)};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const unsigned int blocks = blocks_for(n);
  const bool* mask_ptr = m.data_ptr<bool>();
  int32_t* parent = labels.data_ptr<int32_t>();

  init_kernel<<<blocks, kThreads, 0, stream>>>(mask_ptr, parent, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (connectivity == 6) {
    merge_kernel<6><<<blocks, kThreads, 0, stream>>>(mask_ptr, parent, d);
  } else if (connectivity == 18) {
    merge_kernel<18><<<blocks, kThreads, 0, stream>>>(mask_ptr, parent, d);
  } else {
    merge_kernel<26><<<blocks, kThreads, 0, stream>>>(mask_ptr, parent, d);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  flatten_kernel<<<blocks, kThreads, 0, stream>>>(parent, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  at::Tensor flags = at::empty({n}, labels.options());  // (I*R*C,) 1 at roots
  root_flag_kernel<<<blocks, kThreads, 0, stream>>>(parent, flags.data_ptr<int32_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor root_rank = at::cumsum(flags, 0, at::kInt);  // (I*R*C,) label of each root
  relabel_kernel<<<blocks, kThreads, 0, stream>>>(parent, root_rank.data_ptr<int32_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t count = root_rank[n - 1].item<int32_t>();  // syncs the stream
  return {labels, c10::SymInt(count)};
}

}  // namespace
}  // namespace lunakit::ops::detail

TORCH_LIBRARY_IMPL(lunakit, CUDA, m) { m.impl("label_components", &lunakit::ops::detail::label_components_cuda); }
