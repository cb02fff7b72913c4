// Trilinear resampling of int16 HU volumes (lunakit/resample.h).
#include "lunakit/resample.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "lunakit/error.h"

namespace lunakit {
namespace {

// Source index and weight of every output sample along one axis.
struct Axis {
  std::vector<int64_t> low, high;
  std::vector<double> weight;  // of `high`
};

Axis axis(int64_t source_size, int64_t size, double step) {
  Axis a;
  for (int64_t j = 0; j < size; ++j) {
    const double u = std::min(static_cast<double>(j) * step, static_cast<double>(source_size - 1));
    const int64_t low = static_cast<int64_t>(std::floor(u));
    a.low.push_back(low);
    a.high.push_back(std::min(low + 1, source_size - 1));
    a.weight.push_back(u - static_cast<double>(low));
  }
  return a;
}

Vec3 spacing_irc_of(const Geometry& g) { return {g.spacing_xyz()[2], g.spacing_xyz()[1], g.spacing_xyz()[0]}; }

}  // namespace

Volume resample(const Volume& volume, const Vec3& spacing_irc) {
  for (double s : spacing_irc) {
    if (!(std::isfinite(s) && s > 0.0)) throw Error("resample: spacing must be 3 finite positive numbers (mm)");
  }
  if (volume.voxels.scalar_type() != torch::kInt16 || volume.voxels.dim() != 3) {
    throw Error("resample: expected int16 HU voxels [I, R, C]");
  }
  const Vec3 source = spacing_irc_of(volume.geometry);
  const int64_t sizes[3] = {volume.slices(), volume.rows(), volume.cols()};
  int64_t out[3];
  double count = 1.0;
  for (int k = 0; k < 3; ++k) {
    out[k] =
        static_cast<int64_t>(std::floor(static_cast<double>(sizes[k] - 1) * source[k] / spacing_irc[k] + 1e-6)) + 1;
    count *= static_cast<double>(out[k]);
  }
  if (count > 2147483648.0) {
    char text[160];
    std::snprintf(text, sizeof text, "resample: a spacing of %g x %g x %g mm would make %.3g voxels", spacing_irc[0],
                  spacing_irc[1], spacing_irc[2], count);
    throw Error(text);
  }
  const Axis ai = axis(sizes[0], out[0], spacing_irc[0] / source[0]);
  const Axis ar = axis(sizes[1], out[1], spacing_irc[1] / source[1]);
  const Axis ac = axis(sizes[2], out[2], spacing_irc[2] / source[2]);
  const torch::Tensor in = volume.voxels.to(torch::kCPU).contiguous();
  torch::Tensor result = torch::empty({out[0], out[1], out[2]}, torch::kInt16);
  const int16_t* src = in.data_ptr<int16_t>();
  int16_t* dst = result.data_ptr<int16_t>();
  const int64_t plane = sizes[1] * sizes[2], row = sizes[2];
  at::parallel_for(0, out[0], 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int16_t* p0 = src + ai.low[i] * plane;
      const int16_t* p1 = src + ai.high[i] * plane;
      const double wi = ai.weight[i];
      int16_t* o = dst + i * out[1] * out[2];
      for (int64_t r = 0; r < out[1]; ++r) {
        const int64_t r0 = ar.low[r] * row, r1 = ar.high[r] * row;
        const double wr = ar.weight[r];
        for (int64_t c = 0; c < out[2]; ++c) {
          const int64_t c0 = ac.low[c], c1 = ac.high[c];
          const double wc = ac.weight[c];
          auto plane_value = [&](const int16_t* p) {
            const double top = p[r0 + c0] + wc * (p[r0 + c1] - p[r0 + c0]);
            const double bottom = p[r1 + c0] + wc * (p[r1 + c1] - p[r1 + c0]);
            return top + wr * (bottom - top);
          };
          const double v0 = plane_value(p0), v1 = plane_value(p1);
          *o++ = static_cast<int16_t>(std::nearbyint(v0 + wi * (v1 - v0)));
        }
      }
    }
  });
  const Vec3 spacing_xyz{spacing_irc[2], spacing_irc[1], spacing_irc[0]};
  return Volume{result, Geometry(volume.geometry.origin_xyz(), spacing_xyz, volume.geometry.direction())};
}

void to_source_grid(std::vector<Finding>& findings, const Volume& source, const Volume& analyzed) {
  const Vec3 from = spacing_irc_of(analyzed.geometry), to = spacing_irc_of(source.geometry);
  const int64_t sizes[3] = {source.slices(), source.rows(), source.cols()};
  for (Finding& f : findings) {
    for (int k = 0; k < 3; ++k) {
      const double ratio = from[k] / to[k];
      f.center_irc[k] *= ratio;
      f.bbox_min_irc[k] = static_cast<int64_t>(std::floor(static_cast<double>(f.bbox_min_irc[k]) * ratio));
      f.bbox_max_irc[k] =
          std::min(sizes[k] - 1, static_cast<int64_t>(std::ceil(static_cast<double>(f.bbox_max_irc[k]) * ratio)));
    }
  }
}

}  // namespace lunakit
