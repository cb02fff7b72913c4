// The C++ API (lunakit/ops.h): typed dispatcher calls of the lunakit ops. Input errors the
// kernels report (c10::ValueError / c10::TypeError) become lunakit::Error.
#include "lunakit/ops.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <limits>
#include <tuple>

#include "lunakit/error.h"

namespace lunakit::ops {
namespace {

c10::OperatorHandle find_op(const char* name, const char* overload = "") {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload);
}

// Runs f, turning the kernels' input errors into lunakit::Error (message without backtrace).
template <typename F>
auto rethrow_input_errors(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::ValueError& e) {
    throw lunakit::Error(e.what_without_backtrace());
  } catch (const c10::TypeError& e) {
    throw lunakit::Error(e.what_without_backtrace());
  }
}

std::pair<double, double> clip_bounds(const CropOptions& options) {
  if (options.clip) return *options.clip;
  return {-std::numeric_limits<double>::infinity(), std::numeric_limits<double>::infinity()};
}

}  // namespace

at::Tensor extract_crops(const at::Tensor& volume, const at::Tensor& centers_irc, const CropOptions& options) {
  static const auto op = find_op("lunakit::extract_crops")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::IntArrayRef, c10::string_view,
                                               double, double, double)>();
  const auto [lo, hi] = clip_bounds(options);
  return rethrow_input_errors(
      [&] { return op.call(volume, centers_irc, options.size, options.mode, options.fill, lo, hi); });
}

at::Tensor& extract_crops_out(const at::Tensor& volume, const at::Tensor& centers_irc, at::Tensor& out,
                              const CropOptions& options) {
  static const auto op = find_op("lunakit::extract_crops_into")
                             .typed<void(const at::Tensor&, const at::Tensor&, c10::IntArrayRef, c10::string_view,
                                         double, double, double, at::Tensor&)>();
  const auto [lo, hi] = clip_bounds(options);
  rethrow_input_errors([&] { op.call(volume, centers_irc, options.size, options.mode, options.fill, lo, hi, out); });
  return out;
}

at::Tensor binary_erode(const at::Tensor& mask) {
  static const auto op = find_op("lunakit::binary_erode").typed<at::Tensor(const at::Tensor&)>();
  return rethrow_input_errors([&] { return op.call(mask); });
}

Components label_components(const at::Tensor& mask, int64_t connectivity) {
  static const auto op =
      find_op("lunakit::label_components").typed<std::tuple<at::Tensor, c10::SymInt>(const at::Tensor&, int64_t)>();
  auto [labels, count] = rethrow_input_errors([&] { return op.call(mask, connectivity); });
  return {labels, count.expect_int()};
}

ComponentStats component_stats(const at::Tensor& labels, int64_t count, const std::optional<at::Tensor>& weights) {
  using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
  static const auto op =
      find_op("lunakit::component_stats").typed<Result(const at::Tensor&, int64_t, const std::optional<at::Tensor>&)>();
  auto [voxel_count, bbox_min, bbox_max, center_irc, weight_sum] =
      rethrow_input_errors([&] { return op.call(labels, count, weights); });
  return {voxel_count, bbox_min, bbox_max, center_irc, weight_sum};
}

at::Tensor component_cores(const at::Tensor& labels, int64_t count,
                           const std::optional<std::array<double, 3>>& spacing) {
  static const auto op = find_op("lunakit::component_cores")
                             .typed<at::Tensor(const at::Tensor&, int64_t, std::optional<at::ArrayRef<double>>)>();
  std::optional<at::ArrayRef<double>> steps;
  if (spacing) steps = at::ArrayRef<double>(*spacing);
  return rethrow_input_errors([&] { return op.call(labels, count, steps); });
}

at::Tensor lung_field(const at::Tensor& hu) {
  static const auto op = find_op("lunakit::lung_field").typed<at::Tensor(const at::Tensor&)>();
  return rethrow_input_errors([&] { return op.call(hu); });
}

at::Tensor near_mask(const at::Tensor& mask, const at::Tensor& centers_irc, const std::array<double, 3>& spacing,
                     double margin_mm) {
  static const auto op = find_op("lunakit::near_mask")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::ArrayRef<double>, double)>();
  return rethrow_input_errors([&] { return op.call(mask, centers_irc, spacing, margin_mm); });
}

}  // namespace lunakit::ops
