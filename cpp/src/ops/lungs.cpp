// lung_field and near_mask: where the lungs are, and which candidates lie near them. A chest CT
// also shows the neck and the upper abdomen, where gas in the bowel looks like nothing the
// classifiers trained on; candidates far from both lungs are dropped (option lung_margin_mm).
// Written with ATen ops and label_components only, so one implementation serves CPU and CUDA.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "lunakit/ops.h"
#include "ops.h"

namespace lunakit::ops::detail {
namespace {

using at::indexing::Slice;

constexpr double kAirHu = -400.0;              // lungs, bowel gas and the air outside the body
constexpr double kParenchymaMeanHu = -930.0;   // lungs average above; bowel gas and trachea below
constexpr double kLeastShareOfLargest = 0.05;  // air components smaller than this share are dropped

// The labels (1..) of label_components' result met on the edge rows and columns of any slice.
at::Tensor on_slice_edges(const at::Tensor& labels, int64_t count) {
  const int64_t rows = labels.size(1), cols = labels.size(2);
  const at::Tensor edges = at::cat({labels.select(1, 0).flatten(), labels.select(1, rows - 1).flatten(),
                                    labels.select(2, 0).flatten(), labels.select(2, cols - 1).flatten()});
  at::Tensor met = at::zeros({count + 1}, labels.options().dtype(at::kBool));
  met.index_put_({edges}, at::ones({}, met.options()));
  return met;
}

at::Tensor lung_field(const at::Tensor& hu) {
  TORCH_CHECK_VALUE(hu.dim() == 3, "lung_field: hu must be [I, R, C], got ", hu.dim(), " dims");
  TORCH_CHECK_VALUE(at::isIntegralType(hu.scalar_type(), false) || at::isFloatingType(hu.scalar_type()),
                    "lung_field: hu must be a real number dtype, got ", hu.scalar_type());
  at::Tensor lungs = at::zeros(hu.sizes(), hu.options().dtype(at::kBool));
  if (hu.numel() == 0) return lungs;
  const Components air = label_components(hu < kAirHu, 6);
  if (air.count == 0) return lungs;
  const at::Tensor flat = air.labels.flatten();
  const at::Tensor sizes = at::bincount(flat, {}, air.count + 1).to(at::kDouble);
  const at::Tensor sums = at::bincount(flat, hu.flatten().to(at::kFloat), air.count + 1).to(at::kDouble);
  const double largest = sizes.index({Slice(1)}).max().item<double>();
  at::Tensor keep = (sizes >= kLeastShareOfLargest * largest) & (sums / sizes.clamp_min(1) > kParenchymaMeanHu) &
                    ~on_slice_edges(air.labels, air.count);
  keep[0] = false;
  lungs = keep.index({air.labels});  // int32 labels index directly: no 8-byte copy of the volume
  // Vessels and nodules inside the lungs: in each slice, what is not lung and not connected to
  // the slice's edge (4-connected, as label_components' 6 neighbors within one slice).
  for (int64_t i = 0; i < lungs.size(0); ++i) {
    const at::Tensor slice = lungs[i];
    if (!slice.any().item<bool>()) continue;
    const Components rest = label_components(slice.logical_not().unsqueeze(0), 6);
    const at::Tensor open = on_slice_edges(rest.labels, rest.count);
    open[0] = true;
    slice.logical_or_(open.logical_not().index({rest.labels[0]}));
  }
  return lungs;
}

at::Tensor near_mask(const at::Tensor& mask, const at::Tensor& centers_irc, at::ArrayRef<double> spacing,
                     double margin_mm) {
  check_mask(mask, "near_mask");
  TORCH_CHECK_VALUE(centers_irc.dim() == 2 && centers_irc.size(1) == 3, "near_mask: centers_irc must be [K, 3], got ",
                    centers_irc.sizes());
  const std::array<double, 3> mm = check_spacing(spacing, "near_mask");
  TORCH_CHECK_VALUE(std::isfinite(margin_mm) && margin_mm >= 0.0, "near_mask: margin_mm must be finite and >= 0, got ",
                    margin_mm);
  const at::Tensor centers = centers_irc.to(at::kCPU, at::kDouble);
  TORCH_CHECK_VALUE(at::isfinite(centers).all().item<bool>(), "near_mask: centers_irc must be finite");
  const int64_t k = centers.size(0);
  at::Tensor near = at::zeros({k}, at::TensorOptions().dtype(at::kBool));
  const at::Tensor step = at::tensor(at::ArrayRef<double>(mm), mask.options().dtype(at::kDouble));
  auto c = centers.accessor<double, 2>();
  for (int64_t n = 0; n < k; ++n) {
    // Only voxels in the box of half-size margin around the center can lie within the margin.
    std::vector<at::indexing::TensorIndex> box;
    std::vector<int64_t> low;
    bool empty = false;
    for (int64_t d = 0; d < 3; ++d) {
      const int64_t lo = std::max<int64_t>(0, static_cast<int64_t>(std::ceil(c[n][d] - margin_mm / mm[d])));
      const int64_t hi =
          std::min<int64_t>(mask.size(d) - 1, static_cast<int64_t>(std::floor(c[n][d] + margin_mm / mm[d])));
      empty = empty || lo > hi;
      box.emplace_back(Slice(lo, hi + 1));
      low.push_back(lo);
    }
    if (empty) continue;
    const at::Tensor voxels = at::nonzero(mask.index(box));
    if (voxels.size(0) == 0) continue;
    const at::Tensor center = at::tensor({c[n][0] - low[0], c[n][1] - low[1], c[n][2] - low[2]}, step.options());
    const at::Tensor squared = ((voxels.to(at::kDouble) - center) * step).square().sum(1);
    near[n] = squared.min().item<double>() <= margin_mm * margin_mm;
  }
  return near.to(centers_irc.device());
}

}  // namespace
}  // namespace lunakit::ops::detail

TORCH_LIBRARY_IMPL(lunakit, CompositeExplicitAutograd, m) {
  m.impl("lung_field", &lunakit::ops::detail::lung_field);
  m.impl("near_mask", &lunakit::ops::detail::near_mask);
}
