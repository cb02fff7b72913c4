// DICOM folders through the library API (lunakit::load_scan, as a PACS plug-in calls it): a
// series written here byte by byte reads back, and the same series with one file cut short at
// any length throws lunakit::Error naming that file (GDCM itself aborts on some of these cuts).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "lunakit/error.h"
#include "lunakit/scan.h"

namespace fs = std::filesystem;

namespace {

const char* kSeries = "1.2.826.0.1.3680043.9.8.17";

std::string u16(uint16_t v) { return {static_cast<char>(v & 0xff), static_cast<char>(v >> 8)}; }
std::string u32(uint32_t v) { return u16(static_cast<uint16_t>(v & 0xffff)) + u16(static_cast<uint16_t>(v >> 16)); }

// One explicit-VR little-endian element; text values padded to even length as DICOM requires.
std::string element(uint16_t group, uint16_t number, const std::string& vr, std::string value) {
  if (value.size() % 2) value += vr == "UI" ? '\0' : ' ';
  const bool long_form = vr == "OB" || vr == "OW" || vr == "SQ" || vr == "UN";
  return u16(group) + u16(number) + vr + (long_form ? u16(0) + u32(value.size()) : u16(value.size())) + value;
}

// A 4 x 4 int16 CT slice at z, pixel value k = stored k, rescale intercept -1024.
std::string slice_file(int index, double z) {
  const std::string sop = std::string(kSeries) + "." + std::to_string(index + 1);
  std::string meta = element(2, 1, "OB", std::string("\0\1", 2)) + element(2, 2, "UI", "1.2.840.10008.5.1.4.1.1.2") +
                     element(2, 3, "UI", sop) + element(2, 0x10, "UI", "1.2.840.10008.1.2.1");
  meta = element(2, 0, "UL", u32(meta.size())) + meta;
  std::string pixels;
  for (int k = 0; k < 16; ++k) pixels += u16(static_cast<uint16_t>(100 * index + k));
  const std::string data =
      element(8, 0x16, "UI", "1.2.840.10008.5.1.4.1.1.2") + element(8, 0x18, "UI", sop) + element(8, 0x60, "CS", "CT") +
      element(0x20, 0x0d, "UI", "1.2.826.0.1.3680043.9.8.1") + element(0x20, 0x0e, "UI", kSeries) +
      element(0x20, 0x13, "IS", std::to_string(index + 1)) + element(0x20, 0x32, "DS", "0\\0\\" + std::to_string(z)) +
      element(0x20, 0x37, "DS", "1\\0\\0\\0\\1\\0") + element(0x28, 2, "US", u16(1)) +
      element(0x28, 4, "CS", "MONOCHROME2") + element(0x28, 0x10, "US", u16(4)) + element(0x28, 0x11, "US", u16(4)) +
      element(0x28, 0x30, "DS", "0.5\\0.5") + element(0x28, 0x100, "US", u16(16)) +
      element(0x28, 0x101, "US", u16(16)) + element(0x28, 0x102, "US", u16(15)) + element(0x28, 0x103, "US", u16(1)) +
      element(0x28, 0x1052, "DS", "-1024") + element(0x28, 0x1053, "DS", "1") + element(0x7fe0, 0x10, "OW", pixels);
  return std::string(128, '\0') + "DICM" + meta + data;
}

class DicomTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "lunakit_dicom_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    for (int k = 0; k < 3; ++k) files_.push_back(slice_file(k, 2.0 * k));
    for (int k = 0; k < 3; ++k) put(k, files_[k]);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path(int k) const { return (dir_ / ("s" + std::to_string(k) + ".dcm")).string(); }
  void put(int k, const std::string& bytes) const { std::ofstream(path(k), std::ios::binary) << bytes; }

  std::string error_of() const {
    try {
      lunakit::load_scan(dir_.string());
    } catch (const lunakit::Error& e) {
      return e.what();
    }
    return "";
  }

  fs::path dir_;
  std::vector<std::string> files_;
};

TEST_F(DicomTest, WholeSeriesReads) {
  const lunakit::Scan scan = lunakit::load_scan(dir_.string());
  EXPECT_EQ(scan.series_uid, kSeries);
  ASSERT_EQ(scan.volume.voxels.sizes(), torch::IntArrayRef({3, 4, 4}));
  EXPECT_EQ(scan.volume.voxels[2][3][3].item<int>(), 200 + 15 - 1024);
  EXPECT_DOUBLE_EQ(scan.volume.geometry.spacing_xyz()[2], 2.0);
}

TEST_F(DicomTest, FileCutAnywhereThrowsNamingIt) {
  const int64_t size = static_cast<int64_t>(files_[1].size());
  // 132: the "DICM" marker and nothing more; 140, 200: inside the meta information; then inside
  // the data set's elements, inside the pixel data, one byte short.
  for (const int64_t cut :
       {int64_t{132}, int64_t{140}, int64_t{200}, int64_t{260}, int64_t{300}, int64_t{400}, size - 20, size - 1}) {
    put(1, files_[1].substr(0, static_cast<size_t>(cut)));
    const std::string message = error_of();
    EXPECT_NE(message.find("s1.dcm: cut short"), std::string::npos) << "cut at " << cut << ": " << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

TEST_F(DicomTest, PixelDataShorterThanTheImageThrows) {
  std::string bytes = files_[1];
  const size_t at = bytes.size() - 32 - 4;  // the OW length field of (7FE0,0010)
  bytes.replace(at, 4, u32(16));
  bytes.resize(bytes.size() - 16);
  put(1, bytes);
  EXPECT_NE(error_of().find("s1.dcm: pixel data hold 16 bytes, 4 x 4 pixels of 16 bits need 32"), std::string::npos)
      << error_of();
}

TEST_F(DicomTest, DcmFileThatIsNotDicomThrows) {
  put(1, files_[1].substr(0, 100));
  EXPECT_NE(error_of().find("s1.dcm: not a DICOM file"), std::string::npos) << error_of();
  fs::remove(path(1));
  std::ofstream(dir_ / "notes.txt") << "not DICOM, ignored";
  EXPECT_EQ(lunakit::load_scan(dir_.string()).volume.slices(), 2);
}

}  // namespace
