// extract_crops on CUDA: one thread per output voxel, consecutive threads along C, so both
// the reads of a volume row and the writes of a crop row are coalesced.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../ops.h"
#include "../voxel_kernels.h"
#include "launch.cuh"

namespace lunakit::ops::detail {
namespace {

using namespace lunakit::ops::cuda;  // blocks_for, grid_first, grid_stride, kThreads

// starts[n, axis] of each crop, from float64 centers (the same crop_start as the CPU).
__global__ void crop_starts_kernel(const double* __restrict__ centers, int64_t n, Dims d, int64_t s0, int64_t s1,
                                   int64_t s2, bool shift, int64_t* __restrict__ starts) {
  for (int64_t k = grid_first(); k < n; k += grid_stride()) {
    starts[k * 3 + 0] = crop_start(centers[k * 3 + 0], s0, d.i, shift);
    starts[k * 3 + 1] = crop_start(centers[k * 3 + 1], s1, d.r, shift);
    starts[k * 3 + 2] = crop_start(centers[k * 3 + 2], s2, d.c, shift);
  }
}

template <typename T>
__global__ void crop_voxels_kernel(const T* __restrict__ volume, Dims d, const int64_t* __restrict__ starts,
                                   int64_t n_out, int64_t s0, int64_t s1, int64_t s2, float fill, float lo, float hi,
                                   float* __restrict__ out) {
  for (int64_t idx = grid_first(); idx < n_out; idx += grid_stride()) {
    int64_t t = idx;
    const int64_t k2 = t % s2;
    t /= s2;
    const int64_t k1 = t % s1;
    t /= s1;
    const int64_t k0 = t % s0;
    const int64_t n = t / s0;
    const int64_t i = starts[n * 3 + 0] + k0, r = starts[n * 3 + 1] + k1, c = starts[n * 3 + 2] + k2;
    const bool inside = i >= 0 && i < d.i && r >= 0 && r < d.r && c >= 0 && c < d.c;
    out[idx] = inside ? clip_value(static_cast<float>(volume[(i * d.r + r) * d.c + c]), lo, hi) : fill;
  }
}

void fill_crops_cuda(const at::Tensor& volume, const at::Tensor& centers_irc, const CropArgs& args, at::Tensor& out) {
  TORCH_CHECK_VALUE(volume.is_cuda(), "extract_crops: expected CUDA tensors, got ", volume.device());
  const c10::cuda::CUDAGuard guard(volume.device());
  const int64_t n = centers_irc.size(0);
  if (n == 0) return;
  const at::Tensor vol = volume.contiguous();
  const at::Tensor centers = centers_irc.to(at::kDouble).contiguous();
  at::Tensor starts = at::empty({n, 3}, centers.options().dtype(at::kLong));  // (N, 3)
  const Dims d{vol.size(0), vol.size(1), vol.size(2)};
  const int64_t s0 = args.size[0], s1 = args.size[1], s2 = args.size[2];
  const auto stream = at::cuda::getCurrentCUDAStream();
  crop_starts_kernel<<<blocks_for(n), kThreads, 0, stream>>>(centers.data_ptr<double>(), n, d, s0, s1, s2,
                                                             args.mode == CropMode::kShift, starts.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t n_out = out.numel();
  if (vol.scalar_type() == at::kShort) {
    crop_voxels_kernel<int16_t><<<blocks_for(n_out), kThreads, 0, stream>>>(
        vol.data_ptr<int16_t>(), d, starts.data_ptr<int64_t>(), n_out, s0, s1, s2, args.fill, args.clip_min,
        args.clip_max, out.data_ptr<float>());
  } else {
    crop_voxels_kernel<float><<<blocks_for(n_out), kThreads, 0, stream>>>(
        vol.data_ptr<float>(), d, starts.data_ptr<int64_t>(), n_out, s0, s1, s2, args.fill, args.clip_min,
        args.clip_max, out.data_ptr<float>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void extract_crops_into_cuda(const at::Tensor& volume, const at::Tensor& centers_irc, at::IntArrayRef size,
                             c10::string_view mode, double fill, double clip_min, double clip_max, at::Tensor& out) {
  const CropArgs args = check_extract_crops(volume, centers_irc, size, mode, fill, clip_min, clip_max);
  check_crops_out(out, volume, centers_irc.size(0), args);
  fill_crops_cuda(volume, centers_irc, args, out);
}

at::Tensor extract_crops_cuda(const at::Tensor& volume, const at::Tensor& centers_irc, at::IntArrayRef size,
                              c10::string_view mode, double fill, double clip_min, double clip_max) {
  const CropArgs args = check_extract_crops(volume, centers_irc, size, mode, fill, clip_min, clip_max);
  at::Tensor out = at::empty({centers_irc.size(0), 1, args.size[0], args.size[1], args.size[2]},
                             volume.options().dtype(at::kFloat));  // (N, 1, S0, S1, S2)
  fill_crops_cuda(volume, centers_irc, args, out);
  return out;
}

}  // namespace
}  // namespace lunakit::ops::detail

TORCH_LIBRARY_IMPL(lunakit, CUDA, m) {
  m.impl("extract_crops", &lunakit::ops::detail::extract_crops_cuda);
  m.impl("extract_crops_into", &lunakit::ops::detail::extract_crops_into_cuda);
}
