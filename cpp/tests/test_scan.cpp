// lunakit::load_scan / read_scan (scan.h): MetaImages written by the tests, turned into int16 HU
// as lunakit.io.ct.load turns them; every refusal one lunakit::Error naming the path.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string>

#include "lunakit/error.h"
#include "lunakit/metaimage.h"
#include "lunakit/scan.h"

namespace fs = std::filesystem;

namespace {

class ScanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "lunakit_scan_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // dir/<name>.mhd holding `voxels` [2, 2, 2] with a non-trivial geometry.
  std::string write(const std::string& name, const torch::Tensor& voxels) {
    const std::string path = (dir_ / (name + ".mhd")).string();
    const lunakit::Geometry geometry({1, 2, 3}, {0.5, 0.5, 2.0}, {1, 0, 0, 0, 1, 0, 0, 0, 1});
    lunakit::write_metaimage(path, {voxels, geometry});
    return path;
  }

  static std::string error_of(const std::string& path, const std::string& series_uid = "") {
    try {
      lunakit::load_scan(path, series_uid);
    } catch (const lunakit::Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "no error for " << path;
    return "";
  }

  fs::path dir_;
};

TEST_F(ScanTest, FloatVoxelsAreRoundedHalfToEven) {
  const torch::Tensor values = torch::tensor({-1000.5f, -0.5f, 0.5f, 1.5f, 2.5f, 3.4f, 1e3f, -3.5f}).view({2, 2, 2});
  const std::string path = write("1.2.3", values);
  const lunakit::Scan raw = lunakit::read_scan(path);
  EXPECT_EQ(raw.volume.voxels.scalar_type(), torch::kFloat32);
  const lunakit::Scan scan = lunakit::load_scan(path);
  ASSERT_EQ(scan.volume.voxels.scalar_type(), torch::kInt16);
  const torch::Tensor expected = torch::tensor({-1000, 0, 0, 2, 2, 3, 1000, -4}, torch::kInt16).view({2, 2, 2});
  EXPECT_TRUE(torch::equal(scan.volume.voxels, expected));
  EXPECT_EQ(scan.series_uid, "1.2.3");
  EXPECT_EQ(scan.source, path);
  EXPECT_DOUBLE_EQ(scan.volume.geometry.origin_xyz()[2], 3.0);
  EXPECT_DOUBLE_EQ(scan.volume.geometry.spacing_xyz()[2], 2.0);
}

TEST_F(ScanTest, RefusalsNameThePath) {
  const std::string path = write("s", torch::zeros({2, 2, 2}, torch::kInt16));
  EXPECT_EQ(error_of(path, "other"), path + ": holds series s, not the requested other");
  const std::string none = (dir_ / "none.mhd").string();
  EXPECT_EQ(error_of(none), none + ": not found (no such file or directory)");
  const std::string nifti = (dir_ / "scan.nii").string();
  fs::copy_file(path, nifti);
  EXPECT_EQ(error_of(nifti), nifti + ": unknown extension, expected a DICOM directory or a .mhd/.mha file");
  torch::Tensor nan = torch::zeros({2, 2, 2});
  nan[0][0][0] = std::numeric_limits<float>::quiet_NaN();
  const std::string with_nan = write("nan", nan);
  EXPECT_EQ(error_of(with_nan), with_nan + ": voxel values include NaN or infinity");
  const std::string huge = write("huge", torch::full({2, 2, 2}, 40000.0f));
  EXPECT_EQ(error_of(huge), huge + ": HU values 40000..40000 do not fit int16");
}

TEST(CleanPath, AsPathlibPrintsIt) {
  EXPECT_EQ(lunakit::clean_path("a//b/./c/"), "a/b/c");
  EXPECT_EQ(lunakit::clean_path("/x/"), "/x");
  EXPECT_EQ(lunakit::clean_path("./"), ".");
}

}  // namespace
