#pragma once
// Patient (mm, xyz) <-> voxel (irc) transforms, as docs/design.md ("Geometry") defines them:
//   xyz = origin + direction @ (spacing * cri),   cri = (c, r, i)
//   cri = inverse(direction) @ (xyz - origin) / spacing
// direction is row-major 3x3; column k is the patient direction of index axis k
// (k = 0: column/x, 1: row/y, 2: slice/z), as ITK stores it.
#include <array>

namespace lunakit {

using Vec3 = std::array<double, 3>;
using Mat3 = std::array<double, 9>;  // row-major

class Geometry {
 public:
  Geometry();  // identity direction, unit spacing, zero origin
  // Throws lunakit::Error when spacing is not finite and positive or direction is singular.
  Geometry(const Vec3& origin_xyz, const Vec3& spacing_xyz, const Mat3& direction);

  const Vec3& origin_xyz() const { return origin_xyz_; }
  const Vec3& spacing_xyz() const { return spacing_xyz_; }
  const Mat3& direction() const { return direction_; }

  Vec3 irc_to_xyz(const Vec3& irc) const;
  Vec3 xyz_to_irc(const Vec3& xyz) const;
  // Round half to even, as numpy does.
  static std::array<long long, 3> round_irc(const Vec3& irc);

 private:
  Vec3 origin_xyz_;
  Vec3 spacing_xyz_;
  Mat3 direction_;
  Mat3 inverse_;
};

}  // namespace lunakit
