#pragma once
// Private to the op library: the input checks every backend runs (so CPU and CUDA refuse the
// same inputs with the same messages) and the CPU kernels the CUDA ones are compared with.
#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/string_view.h>

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

namespace lunakit::ops::detail {

enum class CropMode { kShift, kPad };

// The checked, normalized arguments of extract_crops.
struct CropArgs {
  std::array<int64_t, 3> size;
  CropMode mode;
  float fill;
  float clip_min, clip_max;
};

// Checks volume ([I, R, C], int16 | float32), centers_irc ([N, 3], floating, finite, same
// device), size (3 positive), mode ("shift" | "pad"), clip (min <= max, no NaN), and in shift
// mode a volume at least as large as the crop. Throws c10::ValueError / c10::TypeError.
CropArgs check_extract_crops(const at::Tensor& volume, const at::Tensor& centers_irc, at::IntArrayRef size,
                             c10::string_view mode, double fill, double clip_min, double clip_max);

// Checks an out= buffer: float32, [N, 1, *size], contiguous, on the volume's device.
void check_crops_out(const at::Tensor& out, const at::Tensor& volume, int64_t n, const CropArgs& args);

// Checks a mask: bool [I, R, C] (op names the caller in messages).
void check_mask(const at::Tensor& mask, const char* op);

// Checks a spacing (slice, row, column mm: 3 finite positive numbers) and returns it.
std::array<double, 3> check_spacing(at::ArrayRef<double> spacing, const char* op);

// Checks connectivity (6, 18 or 26) and that the mask's voxels can be indexed with int32.
void check_label_components(const at::Tensor& mask, int64_t connectivity);

// Checks labels (int32 [I, R, C]), count >= 0 and weights (real dtype, labels' shape and device);
// op names the caller in messages.
void check_component_stats(const at::Tensor& labels, int64_t count, const std::optional<at::Tensor>& weights,
                           const char* op = "component_stats");

// The CPU kernels (ops/cpu/), registered for the CPU key and callable directly.
at::Tensor extract_crops_cpu(const at::Tensor& volume, const at::Tensor& centers_irc, at::IntArrayRef size,
                             c10::string_view mode, double fill, double clip_min, double clip_max);
void extract_crops_into_cpu(const at::Tensor& volume, const at::Tensor& centers_irc, at::IntArrayRef size,
                            c10::string_view mode, double fill, double clip_min, double clip_max, at::Tensor& out);
at::Tensor binary_erode_cpu(const at::Tensor& mask);
std::tuple<at::Tensor, c10::SymInt> label_components_cpu(const at::Tensor& mask, int64_t connectivity);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> component_stats_cpu(
    const at::Tensor& labels, int64_t count, const std::optional<at::Tensor>& weights);

}  // namespace lunakit::ops::detail
