// Input checks shared by the CPU and CUDA kernels: one message per mistake, naming the op
// and the argument. Value problems raise c10::ValueError, dtype problems c10::TypeError
// (ValueError / TypeError in Python).
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <array>
#include <cmath>
#include <limits>

#include "../ops.h"

namespace lunakit::ops::detail {

CropArgs check_extract_crops(const at::Tensor& volume, const at::Tensor& centers_irc, at::IntArrayRef size,
                             c10::string_view mode, double fill, double clip_min, double clip_max) {
  TORCH_CHECK_VALUE(volume.defined(), "extract_crops: volume is undefined");
  TORCH_CHECK_VALUE(volume.dim() == 3, "extract_crops: volume must be [I, R, C], got ", volume.dim(), " dims (shape ",
                    volume.sizes(), ")");
  TORCH_CHECK_TYPE(volume.scalar_type() == at::kShort || volume.scalar_type() == at::kFloat,
                   "extract_crops: volume must be int16 or float32, got ", volume.scalar_type());
  TORCH_CHECK_VALUE(centers_irc.defined(), "extract_crops: centers_irc is undefined");
  TORCH_CHECK_VALUE(centers_irc.dim() == 2 && centers_irc.size(1) == 3,
                    "extract_crops: centers_irc must be [N, 3], got shape ", centers_irc.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(centers_irc.scalar_type()),
                   "extract_crops: centers_irc must be a floating dtype, got ", centers_irc.scalar_type());
  TORCH_CHECK_VALUE(centers_irc.device() == volume.device(), "extract_crops: centers_irc is on ", centers_irc.device(),
                    " but volume is on ", volume.device());
  TORCH_CHECK_VALUE(size.size() == 3, "extract_crops: size must have 3 values (I, R, C), got ", size.size());
  for (int axis = 0; axis < 3; ++axis) {
    TORCH_CHECK_VALUE(size[axis] > 0, "extract_crops: size must be positive, got ", size);
  }
  CropArgs args{};
  args.size = {size[0], size[1], size[2]};
  if (mode == "shift") {
    args.mode = CropMode::kShift;
  } else if (mode == "pad") {
    args.mode = CropMode::kPad;
  } else {
    TORCH_CHECK_VALUE(false, "extract_crops: mode must be 'shift' or 'pad', got '", std::string(mode), "'");
  }
  TORCH_CHECK_VALUE(!std::isnan(clip_min) && !std::isnan(clip_max), "extract_crops: clip bounds must not be NaN");
  TORCH_CHECK_VALUE(clip_min <= clip_max, "extract_crops: clip_min (", clip_min, ") > clip_max (", clip_max, ")");
  TORCH_CHECK_VALUE(!std::isnan(fill), "extract_crops: fill must not be NaN");
  args.fill = static_cast<float>(fill);
  args.clip_min = static_cast<float>(clip_min);
  args.clip_max = static_cast<float>(clip_max);
  if (args.mode == CropMode::kShift) {
    for (int axis = 0; axis < 3; ++axis) {
      TORCH_CHECK_VALUE(volume.size(axis) >= size[axis], "extract_crops: volume ", volume.sizes(),
                        " is smaller than the crop ", size, " along axis ", axis,
                        " (mode 'shift' needs the crop to fit; use mode 'pad')");
    }
  }
  // NaN / infinite centers: on CUDA this is one small reduction and a sync.
  if (centers_irc.numel() > 0) {
    TORCH_CHECK_VALUE(at::isfinite(centers_irc).all().item<bool>(),
                      "extract_crops: centers_irc holds NaN or infinite values");
  }
  return args;
}

void check_crops_out(const at::Tensor& out, const at::Tensor& volume, int64_t n, const CropArgs& args) {
  TORCH_CHECK_VALUE(out.defined(), "extract_crops: out is undefined");
  TORCH_CHECK_TYPE(out.scalar_type() == at::kFloat, "extract_crops: out must be float32, got ", out.scalar_type());
  TORCH_CHECK_VALUE(out.device() == volume.device(), "extract_crops: out is on ", out.device(), " but volume is on ",
                    volume.device());
  const std::array<int64_t, 5> want{n, 1, args.size[0], args.size[1], args.size[2]};
  TORCH_CHECK_VALUE(out.sizes() == at::IntArrayRef(want), "extract_crops: out must have shape ", at::IntArrayRef(want),
                    ", got ", out.sizes());
  TORCH_CHECK_VALUE(out.is_contiguous(), "extract_crops: out must be contiguous");
}

void check_mask(const at::Tensor& mask, const char* op) {
  TORCH_CHECK_VALUE(mask.defined(), op, ": mask is undefined");
  TORCH_CHECK_VALUE(mask.dim() == 3, op, ": mask must be [I, R, C], got ", mask.dim(), " dims (shape ", mask.sizes(),
                    ")");
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, op, ": mask must be bool, got ", mask.scalar_type(),
                   " (compare first, e.g. prob > 0.5)");
}

std::array<double, 3> check_spacing(at::ArrayRef<double> spacing, const char* op) {
  TORCH_CHECK_VALUE(spacing.size() == 3, op, ": spacing must hold 3 numbers (slice, row, column mm), got ",
                    spacing.size());
  for (double v : spacing)
    TORCH_CHECK_VALUE(std::isfinite(v) && v > 0.0, op, ": spacing must be finite and positive, got ", v);
  return {spacing[0], spacing[1], spacing[2]};
}

void check_label_components(const at::Tensor& mask, int64_t connectivity) {
  check_mask(mask, "label_components");
  TORCH_CHECK_VALUE(connectivity == 6 || connectivity == 18 || connectivity == 26,
                    "label_components: connectivity must be 6, 18 or 26, got ", connectivity);
  TORCH_CHECK_VALUE(mask.numel() <= std::numeric_limits<int32_t>::max(), "label_components: mask has ", mask.numel(),
                    " voxels, more than int32 labels can index");
}

void check_component_stats(const at::Tensor& labels, int64_t count, const std::optional<at::Tensor>& weights,
                           const char* op) {
  TORCH_CHECK_VALUE(labels.defined(), op, ": labels is undefined");
  TORCH_CHECK_VALUE(labels.dim() == 3, op, ": labels must be [I, R, C], got ", labels.dim(), " dims (shape ",
                    labels.sizes(), ")");
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kInt, op, ": labels must be int32, got ", labels.scalar_type());
  TORCH_CHECK_VALUE(count >= 0, op, ": count must be >= 0, got ", count);
  TORCH_CHECK_VALUE(count < std::numeric_limits<int32_t>::max(), op, ": count ", count, " does not fit int32 labels");
  if (weights.has_value() && weights->defined()) {
    const at::Tensor& w = *weights;
    TORCH_CHECK_TYPE(!w.is_complex() && w.scalar_type() != at::kBool, op, ": weights must be a real number dtype, got ",
                     w.scalar_type());
    TORCH_CHECK_VALUE(w.sizes() == labels.sizes(), op, ": weights shape ", w.sizes(), " differs from labels shape ",
                      labels.sizes());
    TORCH_CHECK_VALUE(w.device() == labels.device(), op, ": weights are on ", w.device(), " but labels are on ",
                      labels.device());
  }
}

}  // namespace lunakit::ops::detail
