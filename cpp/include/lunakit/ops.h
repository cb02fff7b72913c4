#pragma once
// lunakit's kernels from C++: thin functions over the dispatcher, so C++ callers (luna_infer,
// PACS tools) run exactly the code torch.ops.lunakit.* runs from Python, on the backend of
// the tensors' device (CPU or CUDA). Bad input throws lunakit::Error with a one-line message.
//
// Contracts (docs/design.md, "Crops" and "Grouping"): volumes are [I, R, C]; a crop starts at
// round(center_irc - size / 2), half to even; labels are int32, 0 = background, components
// 1..count numbered in the raster order of their first voxel, as scipy.ndimage.label does.
#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

namespace lunakit::ops {

// How extract_crops cuts: crop size (I, R, C), "shift" (moved inside the volume, the book's
// behavior) or "pad" (centered, `fill` outside), and the HU window (nullopt: no clipping).
struct CropOptions {
  std::array<int64_t, 3> size{32, 48, 48};
  std::string mode = "shift";
  double fill = -1000.0;
  std::optional<std::pair<double, double>> clip = std::make_pair(-1000.0, 1000.0);
};

// Crops of volume (int16 | float32 [I, R, C]) around centers_irc (floating [N, 3]):
// float32 [N, 1, *size], clipped to options.clip.
at::Tensor extract_crops(const at::Tensor& volume, const at::Tensor& centers_irc, const CropOptions& options = {});

// The same, written into out (float32 [N, 1, *size], contiguous, volume's device); returns out.
at::Tensor& extract_crops_out(const at::Tensor& volume, const at::Tensor& centers_irc, at::Tensor& out,
                              const CropOptions& options = {});

// One binary erosion of mask (bool [I, R, C]) by the 6-connected cross; outside is background.
at::Tensor binary_erode(const at::Tensor& mask);

// Connected components of mask (bool [I, R, C]) with connectivity 6, 18 or 26.
struct Components {
  at::Tensor labels;  // int32 [I, R, C], 0 = background, 1..count
  int64_t count = 0;
};
Components label_components(const at::Tensor& mask, int64_t connectivity = 6);

// Per component k = 1..count (row k - 1): voxel count, inclusive bounding box, center of mass
// (weighted by weights when given, else by voxel) and the sum of weights (= voxel count
// without weights). A label that never occurs gets count 0, bbox -1 and a NaN center.
struct ComponentStats {
  at::Tensor voxel_count;  // int64 [K]
  at::Tensor bbox_min;     // int64 [K, 3], irc, inclusive
  at::Tensor bbox_max;     // int64 [K, 3], irc, inclusive
  at::Tensor center_irc;   // float64 [K, 3]
  at::Tensor weight_sum;   // float64 [K]
};
ComponentStats component_stats(const at::Tensor& labels, int64_t count,
                               const std::optional<at::Tensor>& weights = std::nullopt);

// Each component's core: its voxels of greatest depth (bool [I, R, C]). Depth is the taxicab
// distance to the nearest background: without spacing, to the nearest background pixel of the
// voxel's slice, in pixels; with spacing (slice, row, column mm), in 3D and mm. Where a
// component is thickest, e.g. the nodule of a nodule merged with a vessel.
at::Tensor component_cores(const at::Tensor& labels, int64_t count,
                           const std::optional<std::array<double, 3>>& spacing = std::nullopt);

// The lung field of a CT (bool [I, R, C]): air below -400 HU in 6-connected components that
// reach no slice's edge, hold at least 5% of the largest air component and average above -930
// HU, each slice's holes filled. Where the pipeline looks for nodules (option lung_margin_mm).
at::Tensor lung_field(const at::Tensor& hu);

// For each center (float [K, 3], irc): whether a voxel of mask (bool [I, R, C]) lies within
// margin_mm of it, Euclidean at spacing (slice, row, column mm). bool [K] on the centers' device.
at::Tensor near_mask(const at::Tensor& mask, const at::Tensor& centers_irc, const std::array<double, 3>& spacing,
                     double margin_mm);

}  // namespace lunakit::ops
