#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "lunakit/error.h"
#include "lunakit/geometry.h"

using lunakit::Geometry;
using lunakit::Mat3;
using lunakit::Vec3;

namespace {
// A random rotation (from a random unit quaternion) times a random axis scaling sign.
Mat3 random_oblique(std::mt19937_64& rng) {
  std::normal_distribution<double> n(0.0, 1.0);
  double w = n(rng), x = n(rng), y = n(rng), z = n(rng);
  const double s = std::sqrt(w * w + x * x + y * y + z * z);
  w /= s;
  x /= s;
  y /= s;
  z /= s;
  return {1 - 2 * (y * y + z * z), 2 * (x * y - z * w),     2 * (x * z + y * w),
          2 * (x * y + z * w),     1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
          2 * (x * z - y * w),     2 * (y * z + x * w),     1 - 2 * (x * x + y * y)};
}
}  // namespace

TEST(Geometry, IdentityMatchesHandComputed) {
  Geometry g({-100.0, -200.0, -300.0}, {0.5, 0.7, 2.5}, {1, 0, 0, 0, 1, 0, 0, 0, 1});
  const Vec3 xyz = g.irc_to_xyz({10.0, 20.0, 30.0});  // i, r, c
  EXPECT_DOUBLE_EQ(xyz[0], -100.0 + 30.0 * 0.5);
  EXPECT_DOUBLE_EQ(xyz[1], -200.0 + 20.0 * 0.7);
  EXPECT_DOUBLE_EQ(xyz[2], -300.0 + 10.0 * 2.5);
}

TEST(Geometry, ObliqueRoundTrip) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(-300.0, 300.0), sp(0.3, 5.0);
  double worst = 0.0;
  for (int d = 0; d < 50; ++d) {
    Geometry g({u(rng), u(rng), u(rng)}, {sp(rng), sp(rng), sp(rng)}, random_oblique(rng));
    for (int p = 0; p < 1000; ++p) {
      const Vec3 xyz{u(rng), u(rng), u(rng)};
      const Vec3 back = g.irc_to_xyz(g.xyz_to_irc(xyz));
      for (int k = 0; k < 3; ++k) worst = std::max(worst, std::fabs(back[k] - xyz[k]));
    }
  }
  EXPECT_LT(worst, 1e-9);
}

TEST(Geometry, SingularDirectionThrows) {
  EXPECT_THROW(Geometry({0, 0, 0}, {1, 1, 1}, {1, 0, 0, 1, 0, 0, 0, 0, 1}), lunakit::Error);
  EXPECT_THROW(Geometry({0, 0, 0}, {1, 0, 1}, {1, 0, 0, 0, 1, 0, 0, 0, 1}), lunakit::Error);
}

TEST(Geometry, RoundHalfToEven) {
  const auto r = Geometry::round_irc({0.5, 1.5, -2.5});
  EXPECT_EQ(r[0], 0);
  EXPECT_EQ(r[1], 2);
  EXPECT_EQ(r[2], -2);
}
