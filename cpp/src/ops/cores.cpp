// component_cores: where a component is thickest. A nodule the segmenter merged with a vessel,
// the pleura or the diaphragm has its center of mass pulled off the nodule; its thickest part
// stays on it. Thickness is in-plane (pixels) or, given the spacing, 3D (mm).
// Written with ATen ops only, so one implementation serves CPU and CUDA.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <optional>
#include <vector>

#include "ops.h"

namespace lunakit::ops::detail {
namespace {

using at::indexing::Slice;

constexpr double kTieMm = 1e-6;  // depths closer than this to a component's greatest are its core too

// min over j of f(j) + step * |i - j| along dim, for every i: the lower envelope of cones of
// slope step at f's values, as two running minimums (j <= i and j >= i). Applied along each
// measured dim to 0 at background and a large value elsewhere, it is the exact (weighted)
// taxicab distance transform.
at::Tensor taxicab_pass(const at::Tensor& f, int64_t dim, double step) {
  std::vector<int64_t> shape(f.dim(), 1);
  shape[dim] = f.size(dim);
  const at::Tensor i = at::arange(f.size(dim), f.options()).mul_(step).view(shape);
  const at::Tensor before = std::get<0>(at::cummin(f - i, dim)) + i;
  const at::Tensor after = std::get<0>(at::cummin((f + i).flip(dim), dim)).flip(dim) - i;
  return at::minimum(before, after);
}

// Each voxel of mask (bool [I, R, C]) at its taxicab distance to the nearest background voxel,
// in float64 (0 on background), voxels outside the array counting as background. With spacing
// (slice, row, column mm) the distance is 3D, in mm; without, it is in-plane, in pixels.
at::Tensor depth_of(const at::Tensor& mask, const std::optional<std::array<double, 3>>& spacing) {
  const std::array<double, 3> step = spacing.value_or(std::array<double, 3>{0.0, 1.0, 1.0});
  const int64_t first = spacing ? 0 : 1;  // the first dim measured along
  double far = 1.0;
  std::vector<int64_t> pad;  // last dim first, as constant_pad_nd takes it
  for (int64_t dim = 2; dim >= 0; --dim) {
    const int64_t margin = dim >= first ? 1 : 0;
    pad.insert(pad.end(), {margin, margin});
    far += static_cast<double>(mask.size(dim) + 2) * step[dim];
  }
  at::Tensor depth = at::constant_pad_nd(mask.to(at::kDouble), pad, 0).mul_(far);
  for (int64_t dim = 2; dim >= first; --dim) depth = taxicab_pass(depth, dim, step[dim]);
  for (int64_t dim = first; dim < 3; ++dim) depth = depth.narrow(dim, 1, mask.size(dim));
  return depth;
}

at::Tensor component_cores(const at::Tensor& labels, int64_t count, std::optional<at::ArrayRef<double>> spacing) {
  check_component_stats(labels, count, std::nullopt, "component_cores");
  std::optional<std::array<double, 3>> step;
  if (spacing.has_value()) step = check_spacing(*spacing, "component_cores");
  if (labels.numel() == 0) return at::zeros(labels.sizes(), labels.options().dtype(at::kBool));
  const auto [lo, hi] = at::aminmax(labels);
  TORCH_CHECK_VALUE(lo.item<int32_t>() >= 0 && hi.item<int32_t>() <= count, "component_cores: labels must lie in 0..",
                    count, ", got ", lo.item<int32_t>(), "..", hi.item<int32_t>());
  const at::Tensor mask = labels > 0;
  // All the work happens inside the mask's bounding box (outside it, all is background), so a
  // scan's few small components cost little time and memory.
  at::Tensor core = at::zeros_like(mask);
  std::vector<at::indexing::TensorIndex> box;
  for (int64_t dim = 0; dim < 3; ++dim) {
    std::vector<int64_t> others;
    for (int64_t d = 0; d < 3; ++d)
      if (d != dim) others.push_back(d);
    const at::Tensor used = at::nonzero(mask.any(others[1]).any(others[0])).flatten();
    if (used.numel() == 0) return core;
    box.emplace_back(Slice(used[0].item<int64_t>(), used[-1].item<int64_t>() + 1));
  }
  const at::Tensor inside = labels.index(box);
  const at::Tensor inside_mask = mask.index(box);
  const at::Tensor depth = depth_of(inside_mask, step).reshape({-1});
  const at::Tensor flat = inside.reshape({-1}).to(at::kLong);
  const at::Tensor deepest = at::zeros({count + 1}, depth.options()).scatter_reduce(0, flat, depth, "amax");
  // Depths in mm are sums of float steps, so ties are taken to within kTieMm of the greatest.
  const at::Tensor deep = depth >= deepest.index_select(0, flat) - kTieMm;
  core.index_put_(box, inside_mask & deep.view(inside.sizes()));
  return core;
}

}  // namespace
}  // namespace lunakit::ops::detail

TORCH_LIBRARY_IMPL(lunakit, CompositeExplicitAutograd, m) {
  m.impl("component_cores", &lunakit::ops::detail::component_cores);
}
