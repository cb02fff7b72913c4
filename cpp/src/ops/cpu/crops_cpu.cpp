// extract_crops on the CPU: one parallel task per output row (n, i, r), each a contiguous
// run along C converted to float32 and clipped in one pass.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../ops.h"
#include "../voxel_kernels.h"

namespace lunakit::ops::detail {
namespace {

template <typename T>
void crop_rows(const T* volume, Dims d, const int64_t* starts, int64_t n_crops, const CropArgs& a, float* out) {
  const int64_t s0 = a.size[0], s1 = a.size[1], s2 = a.size[2];
  const float lo = a.clip_min, hi = a.clip_max, fill = a.fill;
  const int64_t n_rows = n_crops * s0 * s1;
  at::parallel_for(0, n_rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / (s0 * s1);
      const int64_t k0 = (row / s1) % s0, k1 = row % s1;
      const int64_t i = starts[n * 3 + 0] + k0, r = starts[n * 3 + 1] + k1, c_start = starts[n * 3 + 2];
      float* dst = out + row * s2;
      if (i < 0 || i >= d.i || r < 0 || r >= d.r) {
        std::fill(dst, dst + s2, fill);
        continue;
      }
      // Columns [k_begin, k_end) of this row lie inside the volume.
      const int64_t k_begin = std::clamp<int64_t>(-c_start, 0, s2);
      const int64_t k_end = std::clamp<int64_t>(d.c - c_start, k_begin, s2);
      std::fill(dst, dst + k_begin, fill);
      const T* src = volume + (i * d.r + r) * d.c + c_start;
      for (int64_t k = k_begin; k < k_end; ++k) {
        const float v = static_cast<float>(src[k]);
        dst[k] = std::min(std::max(v, lo), hi);
      }
      std::fill(dst + k_end, dst + s2, fill);
    }
  });
}

void fill_crops_cpu(const at::Tensor& volume, const at::Tensor& centers_irc, const CropArgs& args, at::Tensor& out) {
  TORCH_CHECK_VALUE(volume.device().is_cpu(), "extract_crops: expected CPU tensors, got ", volume.device());
  const int64_t n = centers_irc.size(0);
  if (n == 0) return;
  const at::Tensor vol = volume.contiguous();
  const at::Tensor centers = centers_irc.to(at::kDouble).contiguous();
  const Dims d{vol.size(0), vol.size(1), vol.size(2)};
  const double* c = centers.data_ptr<double>();
  const bool shift = args.mode == CropMode::kShift;
  const int64_t extent[3] = {d.i, d.r, d.c};
  std::vector<int64_t> starts(static_cast<size_t>(n) * 3);  // (N, 3) first voxel of each crop
  for (int64_t k = 0; k < n; ++k) {
    for (int axis = 0; axis < 3; ++axis) {
      starts[k * 3 + axis] = crop_start(c[k * 3 + axis], args.size[axis], extent[axis], shift);
    }
  }
  if (vol.scalar_type() == at::kShort) {
    crop_rows(vol.data_ptr<int16_t>(), d, starts.data(), n, args, out.data_ptr<float>());
  } else {
    crop_rows(vol.data_ptr<float>(), d, starts.data(), n, args, out.data_ptr<float>());
  }
}

}  // namespace

void extract_crops_into_cpu(const at::Tensor& volume, const at::Tensor& centers_irc, at::IntArrayRef size,
                            c10::string_view mode, double fill, double clip_min, double clip_max, at::Tensor& out) {
  const CropArgs args = check_extract_crops(volume, centers_irc, size, mode, fill, clip_min, clip_max);
  check_crops_out(out, volume, centers_irc.size(0), args);
  fill_crops_cpu(volume, centers_irc, args, out);
}

at::Tensor extract_crops_cpu(const at::Tensor& volume, const at::Tensor& centers_irc, at::IntArrayRef size,
                             c10::string_view mode, double fill, double clip_min, double clip_max) {
  const CropArgs args = check_extract_crops(volume, centers_irc, size, mode, fill, clip_min, clip_max);
  at::Tensor out = at::empty({centers_irc.size(0), 1, args.size[0], args.size[1], args.size[2]},
                             volume.options().dtype(at::kFloat));  // (N, 1, S0, S1, S2)
  fill_crops_cpu(volume, centers_irc, args, out);
  return out;
}

}  // namespace lunakit::ops::detail

TORCH_LIBRARY_IMPL(lunakit, CPU, m) {
  m.impl("extract_crops", &lunakit::ops::detail::extract_crops_cpu);
  m.impl("extract_crops_into", &lunakit::ops::detail::extract_crops_into_cpu);
}
