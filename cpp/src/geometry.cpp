#include "lunakit/geometry.h"

#include <cfenv>
#include <cmath>
#include <sstream>

#include "lunakit/error.h"

namespace lunakit {

namespace {

// Inverse of a 3x3 matrix by cofactors; throws when it is (numerically) singular.
Mat3 invert(const Mat3& m) {
  const double a = m[0], b = m[1], c = m[2], d = m[3], e = m[4], f = m[5], g = m[6], h = m[7], k = m[8];
  const double c00 = e * k - f * h, c01 = -(d * k - f * g), c02 = d * h - e * g;
  const double det = a * c00 + b * c01 + c * c02;
  double scale = 0.0;
  for (double v : m) scale = std::max(scale, std::fabs(v));
  if (!std::isfinite(det) || scale == 0.0 || std::fabs(det) <= 1e-12 * scale * scale * scale) {
    std::ostringstream msg;
    msg << "direction matrix is singular (determinant " << det << ")";
    throw Error(msg.str());
  }
  const double inv = 1.0 / det;
  return {c00 * inv, -(b * k - c * h) * inv, (b * f - c * e) * inv,
          c01 * inv, (a * k - c * g) * inv,  -(a * f - c * d) * inv,
          c02 * inv, -(a * h - b * g) * inv, (a * e - b * d) * inv};
}

}  // namespace

Geometry::Geometry()
    : origin_xyz_{0, 0, 0}, spacing_xyz_{1, 1, 1}, direction_{1, 0, 0, 0, 1, 0, 0, 0, 1}, inverse_{1, 0, 0, 0, 1,
                                                                                                   0, 0, 0, 1} {}

Geometry::Geometry(const Vec3& origin_xyz, const Vec3& spacing_xyz, const Mat3& direction)
    : origin_xyz_(origin_xyz), spacing_xyz_(spacing_xyz), direction_(direction) {
  for (int k = 0; k < 3; ++k) {
    if (!std::isfinite(origin_xyz[k])) throw Error("origin is not finite");
    if (!std::isfinite(spacing_xyz[k]) || spacing_xyz[k] <= 0.0) {
      std::ostringstream msg;
      msg << "spacing must be finite and positive, got " << spacing_xyz[k];
      throw Error(msg.str());
    }
  }
  inverse_ = invert(direction_);
}

Vec3 Geometry::irc_to_xyz(const Vec3& irc) const {
  const Vec3 scaled{irc[2] * spacing_xyz_[0], irc[1] * spacing_xyz_[1], irc[0] * spacing_xyz_[2]};
  Vec3 xyz;
  for (int row = 0; row < 3; ++row) {
    xyz[row] = origin_xyz_[row] + direction_[3 * row] * scaled[0] + direction_[3 * row + 1] * scaled[1] +
               direction_[3 * row + 2] * scaled[2];
  }
  return xyz;
}

Vec3 Geometry::xyz_to_irc(const Vec3& xyz) const {
  const Vec3 d{xyz[0] - origin_xyz_[0], xyz[1] - origin_xyz_[1], xyz[2] - origin_xyz_[2]};
  Vec3 cri;
  for (int row = 0; row < 3; ++row) {
    cri[row] =
        (inverse_[3 * row] * d[0] + inverse_[3 * row + 1] * d[1] + inverse_[3 * row + 2] * d[2]) / spacing_xyz_[row];
  }
  return {cri[2], cri[1], cri[0]};
}

std::array<long long, 3> Geometry::round_irc(const Vec3& irc) {
  // std::nearbyint honours the current rounding mode, which is round-half-to-even by default.
  std::array<long long, 3> out;
  for (int k = 0; k < 3; ++k) out[k] = static_cast<long long>(std::nearbyint(irc[k]));
  return out;
}

}  // namespace lunakit
