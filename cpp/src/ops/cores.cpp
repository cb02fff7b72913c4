// component_cores: where a component is thickest. A nodule the segmenter merged with a vessel
// or the pleura has its center of mass pulled off the nodule; its thickest part stays on it.
// Written with ATen ops only, so one implementation serves CPU and CUDA.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "ops.h"

namespace lunakit::ops::detail {
namespace {

using at::indexing::Slice;

// min over j of f(j) + |i - j| along dim, for every i: the lower envelope of unit-slope cones
// at f's values, as two running minimums (j <= i and j >= i). Applied along C and then R to
// 0 at background and a large value elsewhere, it is the exact taxicab distance transform.
at::Tensor taxicab_pass(const at::Tensor& f, int64_t dim) {
  std::vector<int64_t> shape(f.dim(), 1);
  shape[dim] = f.size(dim);
  const at::Tensor i = at::arange(f.size(dim), f.options()).view(shape);
  const at::Tensor before = std::get<0>(at::cummin(f - i, dim)) + i;
  const at::Tensor after = std::get<0>(at::cummin((f + i).flip(dim), dim)).flip(dim) - i;
  return at::minimum(before, after);
}

// Per slice of mask (bool [I, R, C]): each voxel's taxicab distance to the nearest background
// pixel of its slice, pixels outside the slice counting as background (0 on background).
at::Tensor in_plane_depth(const at::Tensor& mask) {
  const int64_t far = mask.size(1) + mask.size(2) + 2;
  const at::Tensor padded = at::constant_pad_nd(mask.to(at::kInt), {1, 1, 1, 1}, 0) * far;
  const at::Tensor depth = taxicab_pass(taxicab_pass(padded, 2), 1);
  return depth.index({Slice(), Slice(1, -1), Slice(1, -1)});
}

at::Tensor component_cores(const at::Tensor& labels, int64_t count) {
  check_component_stats(labels, count, std::nullopt, "component_cores");
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
  const at::Tensor depth = in_plane_depth(inside_mask).reshape({-1});  // int32
  const at::Tensor flat = inside.reshape({-1}).to(at::kLong);
  const at::Tensor deepest = at::zeros({count + 1}, depth.options()).scatter_reduce(0, flat, depth, "amax");
  core.index_put_(box, inside_mask & depth.eq(deepest.index_select(0, flat)).view(inside.sizes()));
  return core;
}

}  // namespace
}  // namespace lunakit::ops::detail

TORCH_LIBRARY_IMPL(lunakit, CompositeExplicitAutograd, m) {
  m.impl("component_cores", &lunakit::ops::detail::component_cores);
}
