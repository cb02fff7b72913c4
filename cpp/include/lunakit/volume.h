#pragma once
// A CT volume: voxels [I, R, C] (int16 HU, or float32) plus its Geometry.
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "lunakit/error.h"
#include "lunakit/geometry.h"

namespace lunakit {

struct Volume {
  torch::Tensor voxels;  // [I, R, C], kInt16 or kFloat32, contiguous
  Geometry geometry;

  int64_t slices() const { return voxels.size(0); }
  int64_t rows() const { return voxels.size(1); }
  int64_t cols() const { return voxels.size(2); }

  // Wraps a caller's buffer of slices * rows * cols voxels, laid out [I, R, C] with C fastest
  // (one axial slice after another, each row by row), WITHOUT copying it: the PACS-tool case,
  // where the pixels are already in memory. Lifetime: the buffer must stay alive and
  // unchanged for as long as this Volume or any copy of it (or of its voxels tensor) exists;
  // lunakit only reads it. Throws lunakit::Error for a null buffer or a size below 1.
  template <typename T>
  static Volume from_buffer(const T* buffer, int64_t slices, int64_t rows, int64_t cols, const Geometry& geometry) {
    static_assert(std::is_same_v<T, int16_t> || std::is_same_v<T, float>,
                  "Volume::from_buffer takes int16_t (HU) or float voxels");
    if (buffer == nullptr) throw Error("Volume::from_buffer: buffer is null");
    if (slices < 1 || rows < 1 || cols < 1) {
      throw Error("Volume::from_buffer: size must be positive, got [" + std::to_string(slices) + ", " +
                  std::to_string(rows) + ", " + std::to_string(cols) + "]");
    }
    const auto dtype = std::is_same_v<T, int16_t> ? torch::kInt16 : torch::kFloat32;
    // from_blob takes a non-const pointer; lunakit never writes through it.
    torch::Tensor voxels = torch::from_blob(const_cast<T*>(buffer), {slices, rows, cols},
                                            torch::TensorOptions().dtype(dtype).device(torch::kCPU));
    return Volume{voxels, geometry};
  }
};

}  // namespace lunakit
