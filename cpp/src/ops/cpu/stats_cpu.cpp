// component_stats on the CPU: one raster pass over the labels, a run of equal labels along
// C at a time. Voxel counts, bounding boxes and unweighted coordinate sums are exact
// integers; weighted sums accumulate in float64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../ops.h"

namespace lunakit::ops::detail {
namespace {

struct Accumulators {
  explicit Accumulators(int64_t k)
      : count(k, 0),
        lo(k * 3, std::numeric_limits<int64_t>::max()),
        hi(k * 3, -1),
        sum_irc(k * 3, 0),
        weight(k, 0.0),
        weighted_irc(k * 3, 0.0) {}
  std::vector<int64_t> count, lo, hi, sum_irc;
  std::vector<double> weight, weighted_irc;
};

// Accumulates runs of equal labels; weights_row is null for unweighted statistics.
template <typename W>
void accumulate_slice_rows(const int32_t* labels, const W* weights, int64_t i, int64_t nr, int64_t nc, int64_t count,
                           Accumulators& acc) {
  for (int64_t r = 0; r < nr; ++r) {
    const int64_t row = (i * nr + r) * nc;
    const int32_t* lab = labels + row;
    int64_t c = 0;
    while (c < nc) {
      const int32_t l = lab[c];
      if (l == 0) {
        ++c;
        continue;
      }
      TORCH_CHECK_VALUE(l > 0 && l <= count, "component_stats: labels hold ", l, " at irc (", i, ", ", r, ", ", c,
                        "), outside 0..count (", count, ")");
      const int64_t begin = c;
      while (c < nc && lab[c] == l) ++c;
      const int64_t len = c - begin, k = l - 1;
      acc.count[k] += len;
      int64_t* lo = &acc.lo[k * 3];
      int64_t* hi = &acc.hi[k * 3];
      lo[0] = std::min(lo[0], i), hi[0] = std::max(hi[0], i);
      lo[1] = std::min(lo[1], r), hi[1] = std::max(hi[1], r);
      lo[2] = std::min(lo[2], begin), hi[2] = std::max(hi[2], c - 1);
      int64_t* s = &acc.sum_irc[k * 3];
      s[0] += i * len;
      s[1] += r * len;
      s[2] += (begin + c - 1) * len / 2;  // begin + ... + (c - 1)
      if (weights != nullptr) {
        const W* w = weights + row;
        double run_weight = 0.0, run_weight_c = 0.0;
        for (int64_t x = begin; x < c; ++x) {
          const auto v = static_cast<double>(w[x]);
          run_weight += v;
          run_weight_c += v * static_cast<double>(x);
        }
        acc.weight[k] += run_weight;
        double* wi = &acc.weighted_irc[k * 3];
        wi[0] += run_weight * static_cast<double>(i);
        wi[1] += run_weight * static_cast<double>(r);
        wi[2] += run_weight_c;
      }
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> component_stats_cpu(
    const at::Tensor& labels, int64_t count, const std::optional<at::Tensor>& weights) {
  check_component_stats(labels, count, weights);
  TORCH_CHECK_VALUE(labels.device().is_cpu(), "component_stats: expected CPU tensors, got ", labels.device());
  const bool weighted = weights.has_value() && weights->defined();
  const at::Tensor lab = labels.contiguous();
  const at::Tensor w = weighted ? weights->contiguous() : at::Tensor();
  const int64_t ni = lab.size(0), nr = lab.size(1), nc = lab.size(2);
  Accumulators acc(count);
  const int32_t* lab_ptr = lab.data_ptr<int32_t>();
  if (weighted) {
    AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "component_stats", [&] {
      const auto* w_ptr = w.data_ptr<scalar_t>();
      for (int64_t i = 0; i < ni; ++i) accumulate_slice_rows(lab_ptr, w_ptr, i, nr, nc, count, acc);
    });
  } else {
    for (int64_t i = 0; i < ni; ++i) accumulate_slice_rows<float>(lab_ptr, nullptr, i, nr, nc, count, acc);
  }

  const auto i64 = lab.options().dtype(at::kLong);
  const auto f64 = lab.options().dtype(at::kDouble);
  at::Tensor voxel_count = at::empty({count}, i64);
  at::Tensor bbox_min = at::empty({count, 3}, i64);
  at::Tensor bbox_max = at::empty({count, 3}, i64);
  at::Tensor center_irc = at::empty({count, 3}, f64);
  at::Tensor weight_sum = at::empty({count}, f64);
  int64_t* n_out = voxel_count.data_ptr<int64_t>();
  int64_t* lo_out = bbox_min.data_ptr<int64_t>();
  int64_t* hi_out = bbox_max.data_ptr<int64_t>();
  double* center_out = center_irc.data_ptr<double>();
  double* weight_out = weight_sum.data_ptr<double>();
  for (int64_t k = 0; k < count; ++k) {
    const int64_t n = acc.count[k];
    n_out[k] = n;
    weight_out[k] = weighted ? acc.weight[k] : static_cast<double>(n);
    for (int axis = 0; axis < 3; ++axis) {
      // An empty component (a label that never occurs) has bbox -1 and a NaN center.
      lo_out[k * 3 + axis] = n > 0 ? acc.lo[k * 3 + axis] : -1;
      hi_out[k * 3 + axis] = n > 0 ? acc.hi[k * 3 + axis] : -1;
      const double moment = weighted ? acc.weighted_irc[k * 3 + axis] : static_cast<double>(acc.sum_irc[k * 3 + axis]);
      center_out[k * 3 + axis] = moment / weight_out[k];
    }
  }
  return {voxel_count, bbox_min, bbox_max, center_irc, weight_sum};
}

}  // namespace lunakit::ops::detail

TORCH_LIBRARY_IMPL(lunakit, CPU, m) { m.impl("component_stats", &lunakit::ops::detail::component_stats_cpu); }
