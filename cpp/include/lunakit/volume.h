#pragma once
// A CT volume: voxels [I, R, C] (int16 HU, or float32) plus its Geometry.
#include <torch/types.h>

#include <cstdint>

#include "lunakit/geometry.h"

namespace lunakit {

struct Volume {
  torch::Tensor voxels;  // [I, R, C], kInt16 or kFloat32, contiguous
  Geometry geometry;

  int64_t slices() const { return voxels.size(0); }
  int64_t rows() const { return voxels.size(1); }
  int64_t cols() const { return voxels.size(2); }
};

}  // namespace lunakit
