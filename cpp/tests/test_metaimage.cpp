// MetaImage reader: handmade headers and data written by the tests themselves, checked voxel by
// voxel and against hand-written geometry; every malformed input throws lunakit::Error naming
// the file.
#include <gtest/gtest.h>
#include <zlib.h>

#include <bit>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "lunakit/error.h"
#include "lunakit/metaimage.h"

namespace fs = std::filesystem;
using lunakit::read_metaimage;
using lunakit::Volume;

namespace {

// A fresh folder per test, removed afterwards.
class MetaImage : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "lunakit_mhd_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string write(const std::string& name, const std::string& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path;
  }

  // A header for a 4 (x) x 3 (y) x 2 (z) image, with extra lines before ElementDataFile.
  static std::string header(const std::string& type, const std::string& data_file, const std::string& extra = "") {
    return "ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementType = " + type + "\n" + extra +
           "ElementDataFile = " + data_file + "\n";
  }

  // Writes scan.mhd + scan.raw and reads them back.
  Volume read_pair(const std::string& header_text, const std::string& raw) {
    write("scan.raw", raw);
    return read_metaimage(write("scan.mhd", header_text));
  }

  // The error message of reading `mhd_path`; fails the test when reading does not throw.
  static std::string error_of(const std::string& mhd_path) {
    try {
      read_metaimage(mhd_path);
    } catch (const lunakit::Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "no lunakit::Error for " << mhd_path;
    return "";
  }

  // Expects reading to throw a one-line lunakit::Error that starts with the path and holds `part`.
  static void expect_error(const std::string& mhd_path, const std::string& part) {
    const std::string message = error_of(mhd_path);
    EXPECT_EQ(message.rfind(mhd_path + ": ", 0), 0u) << message;
    EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }

  fs::path dir_;
};

constexpr int kVoxels = 24;  // 4 x 3 x 2

// Raw bytes of `values`, each stored little- or big-endian.
template <typename T>
std::string bytes_of(const std::vector<T>& values, bool msb = false) {
  std::string out(values.size() * sizeof(T), '\0');
  std::memcpy(out.data(), values.data(), out.size());
  if (msb != (std::endian::native == std::endian::big)) {
    for (size_t k = 0; k < values.size(); ++k)
      std::reverse(out.begin() + k * sizeof(T), out.begin() + (k + 1) * sizeof(T));
  }
  return out;
}

// Value of voxel (i, r, c) in the test images: distinct for every voxel, negative ones too.
int16_t short_value(int i, int r, int c) { return static_cast<int16_t>(-1000 + 300 * i + 20 * r + c); }

std::vector<int16_t> short_values() {
  std::vector<int16_t> v;
  for (int i = 0; i < 2; ++i)
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 4; ++c) v.push_back(short_value(i, r, c));  // x fastest, then y, then z
  return v;
}

void expect_short_voxels(const Volume& volume) {
  ASSERT_EQ(volume.voxels.scalar_type(), torch::kInt16);
  ASSERT_EQ(volume.voxels.sizes(), (std::vector<int64_t>{2, 3, 4}));
  ASSERT_TRUE(volume.voxels.is_contiguous());
  const auto a = volume.voxels.accessor<int16_t, 3>();
  for (int i = 0; i < 2; ++i)
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 4; ++c) EXPECT_EQ(a[i][r][c], short_value(i, r, c)) << i << " " << r << " " << c;
}

std::string compressed(const std::string& raw) {
  uLongf size = compressBound(raw.size());
  std::string out(size, '\0');
  EXPECT_EQ(
      compress2(reinterpret_cast<Bytef*>(out.data()), &size, reinterpret_cast<const Bytef*>(raw.data()), raw.size(), 6),
      Z_OK);
  out.resize(size);
  return out;
}

}  // namespace

TEST_F(MetaImage, ShortVoxelsAndGeometry) {
  const Volume v = read_pair(
      header("MET_SHORT", "scan.raw", "Offset = -143.5 -287.25 1e2\nElementSpacing = 0.5 0.69999999999999996 2.5\n"),
      bytes_of(short_values()));
  expect_short_voxels(v);
  EXPECT_EQ(v.geometry.origin_xyz(), (lunakit::Vec3{-143.5, -287.25, 100.0}));
  EXPECT_EQ(v.geometry.spacing_xyz(), (lunakit::Vec3{0.5, 0.7, 2.5}));
  EXPECT_EQ(v.geometry.direction(), (lunakit::Mat3{1, 0, 0, 0, 1, 0, 0, 0, 1}));
}

TEST_F(MetaImage, DefaultsWithoutGeometryKeys) {
  const Volume v = read_pair(header("MET_SHORT", "scan.raw"), bytes_of(short_values()));
  EXPECT_EQ(v.geometry.origin_xyz(), (lunakit::Vec3{0, 0, 0}));
  EXPECT_EQ(v.geometry.spacing_xyz(), (lunakit::Vec3{1, 1, 1}));
  EXPECT_EQ(v.geometry.direction(), (lunakit::Mat3{1, 0, 0, 0, 1, 0, 0, 0, 1}));
}

TEST_F(MetaImage, UCharBecomesInt16) {
  std::vector<uint8_t> values(kVoxels);
  for (int k = 0; k < kVoxels; ++k) values[k] = static_cast<uint8_t>(k * 11);  // up to 253
  const Volume v = read_pair(header("MET_UCHAR", "scan.raw"), bytes_of(values));
  ASSERT_EQ(v.voxels.scalar_type(), torch::kInt16);
  const auto a = v.voxels.accessor<int16_t, 3>();
  for (int k = 0; k < kVoxels; ++k) EXPECT_EQ(a[k / 12][(k / 4) % 3][k % 4], k * 11);
}

TEST_F(MetaImage, UShortThatFitsBecomesInt16) {
  std::vector<uint16_t> values(kVoxels);
  for (int k = 0; k < kVoxels; ++k) values[k] = static_cast<uint16_t>(k == 5 ? 32767 : k * 100);
  const Volume v = read_pair(header("MET_USHORT", "scan.raw"), bytes_of(values));
  ASSERT_EQ(v.voxels.scalar_type(), torch::kInt16);
  const auto a = v.voxels.accessor<int16_t, 3>();
  for (int k = 0; k < kVoxels; ++k) EXPECT_EQ(a[k / 12][(k / 4) % 3][k % 4], values[k]);
}

TEST_F(MetaImage, UShortAbove32767BecomesFloat32) {
  std::vector<uint16_t> values(kVoxels);
  for (int k = 0; k < kVoxels; ++k) values[k] = static_cast<uint16_t>(k == 7 ? 65535 : k == 8 ? 32768 : k);
  const Volume v = read_pair(header("MET_USHORT", "scan.raw"), bytes_of(values));
  ASSERT_EQ(v.voxels.scalar_type(), torch::kFloat32);
  const auto a = v.voxels.accessor<float, 3>();
  for (int k = 0; k < kVoxels; ++k) EXPECT_EQ(a[k / 12][(k / 4) % 3][k % 4], static_cast<float>(values[k]));
}

TEST_F(MetaImage, FloatVoxels) {
  std::vector<float> values(kVoxels);
  for (int k = 0; k < kVoxels; ++k) values[k] = -1024.25f + 0.125f * static_cast<float>(k * k);
  const Volume v = read_pair(header("MET_FLOAT", "scan.raw"), bytes_of(values));
  ASSERT_EQ(v.voxels.scalar_type(), torch::kFloat32);
  const auto a = v.voxels.accessor<float, 3>();
  for (int k = 0; k < kVoxels; ++k) EXPECT_EQ(a[k / 12][(k / 4) % 3][k % 4], values[k]);
}

TEST_F(MetaImage, BigEndianShortFloatAndUShort) {
  expect_short_voxels(
      read_pair(header("MET_SHORT", "scan.raw", "ElementByteOrderMSB = True\n"), bytes_of(short_values(), true)));
  expect_short_voxels(
      read_pair(header("MET_SHORT", "scan.raw", "BinaryDataByteOrderMSB = True\n"), bytes_of(short_values(), true)));

  std::vector<float> floats(kVoxels);
  for (int k = 0; k < kVoxels; ++k) floats[k] = 3.5f * static_cast<float>(k) - 7.0f;
  const Volume f =
      read_pair(header("MET_FLOAT", "scan.raw", "BinaryDataByteOrderMSB = True\n"), bytes_of(floats, true));
  const auto af = f.voxels.accessor<float, 3>();
  for (int k = 0; k < kVoxels; ++k) EXPECT_EQ(af[k / 12][(k / 4) % 3][k % 4], floats[k]);

  std::vector<uint16_t> ushorts(kVoxels);
  for (int k = 0; k < kVoxels; ++k) ushorts[k] = static_cast<uint16_t>(258 * k + 1);
  const Volume u = read_pair(header("MET_USHORT", "scan.raw", "ElementByteOrderMSB = True\n"), bytes_of(ushorts, true));
  ASSERT_EQ(u.voxels.scalar_type(), torch::kInt16);
  const auto au = u.voxels.accessor<int16_t, 3>();
  for (int k = 0; k < kVoxels; ++k) EXPECT_EQ(au[k / 12][(k / 4) % 3][k % 4], ushorts[k]);

  // False means little-endian, whatever the case.
  expect_short_voxels(
      read_pair(header("MET_SHORT", "scan.raw", "ElementByteOrderMSB = false\n"), bytes_of(short_values())));
}

TEST_F(MetaImage, LocalDataAfterHeader) {
  const std::string path =
      write("scan.mha", header("MET_SHORT", "LOCAL", "Offset = 1 2 3\n") + bytes_of(short_values()));
  const Volume v = read_metaimage(path);
  expect_short_voxels(v);
  EXPECT_EQ(v.geometry.origin_xyz(), (lunakit::Vec3{1, 2, 3}));

  // CRLF line ends and whitespace around keys and values.
  const std::string crlf =
      "  NDims=3 \r\n\r\nDimSize   =  4   3 2\r\n\tElementType = MET_SHORT\t\r\nElementDataFile =   LOCAL  \r\n";
  expect_short_voxels(read_metaimage(write("crlf.mha", crlf + bytes_of(short_values()))));
}

TEST_F(MetaImage, LocalDataWithNewlinesInData) {
  // The data holds bytes equal to '\n' and '=': the header ends at the ElementDataFile line.
  std::vector<int16_t> values(kVoxels, static_cast<int16_t>(0x3d0a));
  const Volume v = read_metaimage(write("nl.mha", header("MET_SHORT", "LOCAL") + bytes_of(values)));
  EXPECT_TRUE(torch::equal(v.voxels, torch::full({2, 3, 4}, 0x3d0a, torch::kInt16)));
}

TEST_F(MetaImage, DataLongerThanTheHeaderSaysIsRefused) {
  // More bytes than DimSize x ElementType: a wrong header (e.g. MET_SHORT over float data).
  expect_error(write("extra.mha", header("MET_SHORT", "LOCAL") + bytes_of(short_values()) + "extra"),
               "expected 48 bytes of voxel data after the header, found 53");
  write("float.raw", std::string(96, '\0'));
  expect_error(write("float.mhd", header("MET_SHORT", "float.raw")), "expected 48 bytes of voxel data in data file");
  // An intact stream with a wrong CompressedDataSize, or followed by more bytes.
  const std::string packed = compressed(bytes_of(short_values()));
  write("z.raw", packed + "tail");
  const std::string size = "CompressedData = True\nCompressedDataSize = ";
  expect_error(write("a.mhd", header("MET_SHORT", "z.raw", "CompressedData = True\n")),
               "the compressed stream ends after " + std::to_string(packed.size()) + " of the " +
                   std::to_string(packed.size() + 4) + " bytes of compressed data");
  expect_error(write("b.mhd", header("MET_SHORT", "z.raw", size + std::to_string(packed.size() + 4) + "\n")),
               "the compressed stream ends after");
  expect_error(write("c.mhd", header("MET_SHORT", "z.raw", size + std::to_string(packed.size()) + "\n")),
               "found " + std::to_string(packed.size() + 4));
}

TEST_F(MetaImage, CompressedDataClaimingHugeVolumesIsRefusedBeforeAllocating) {
  // Found by cpp/fuzz (fuzz_metaimage): 2^34 voxels "in" 4 compressed bytes took 32 GB, then threw
  // torch's allocation error with its backtrace. The stream is now checked before memory is taken.
  const std::string text =
      "NDims = 3\nDimSize = 2048 2048 4096\nElementType = MET_SHORT\nCompressedData = True\n"
      "ElementDataFile = LOCAL\nabcd";
  expect_error(write("huge.mha", text), "corrupt compressed data");
  const std::string packed = compressed(bytes_of(short_values()));
  const std::string huge =
      "NDims = 3\nDimSize = 2048 2048 4096\nElementType = MET_SHORT\nCompressedData = True\n"
      "ElementDataFile = LOCAL\n";
  expect_error(write("short.mha", huge + packed), "compressed data inflates to 48 bytes, expected 34359738368");
}

TEST_F(MetaImage, NonFiniteOrNegativeGeometryIsNamed) {
  write("scan.raw", bytes_of(short_values()));
  expect_error(write("a.mhd", header("MET_SHORT", "scan.raw", "ElementSpacing = 1 -1 2\n")),
               "header key ElementSpacing must hold 3 finite positive numbers, got '1 -1 2'");
  expect_error(write("b.mhd", header("MET_SHORT", "scan.raw", "ElementSpacing = nan 1 1\n")),
               "header key ElementSpacing must hold 3 finite positive numbers, got 'nan 1 1'");
  expect_error(write("c.mhd", header("MET_SHORT", "scan.raw", "Offset = 0 inf 0\n")),
               "header key Offset must hold 3 finite numbers, got '0 inf 0'");
}

TEST_F(MetaImage, HeaderSizeSkipsBytes) {
  expect_short_voxels(
      read_pair(header("MET_SHORT", "scan.raw", "HeaderSize = 7\n"), "0123456" + bytes_of(short_values())));
  // -1: the data are the last bytes of the file, whatever precedes them.
  expect_short_voxels(
      read_pair(header("MET_SHORT", "scan.raw", "HeaderSize = -1\n"), "junk-of-any-size" + bytes_of(short_values())));
  // LOCAL: skipped after the header.
  expect_short_voxels(read_metaimage(
      write("skip.mha", header("MET_SHORT", "LOCAL", "HeaderSize = 3\n") + "abc" + bytes_of(short_values()))));
  expect_short_voxels(read_metaimage(
      write("end.mha", header("MET_SHORT", "LOCAL", "HeaderSize = -1\n") + "abcde" + bytes_of(short_values()))));
}

TEST_F(MetaImage, CompressedData) {
  const std::string packed = compressed(bytes_of(short_values()));
  expect_short_voxels(
      read_pair(header("MET_SHORT", "scan.raw",
                       "CompressedData = True\nCompressedDataSize = " + std::to_string(packed.size()) + "\n"),
                packed));
  // Without CompressedDataSize: the stream runs to the end of the file.
  expect_short_voxels(read_pair(header("MET_SHORT", "scan.raw", "CompressedData = True\n"), packed));
  // LOCAL and big-endian.
  const std::string packed_msb = compressed(bytes_of(short_values(), true));
  expect_short_voxels(read_metaimage(write(
      "z.mha", header("MET_SHORT", "LOCAL", "CompressedData = True\nElementByteOrderMSB = True\n") + packed_msb)));
  // HeaderSize = -1 with CompressedDataSize.
  expect_short_voxels(read_pair(
      header("MET_SHORT", "scan.raw",
             "CompressedData = True\nHeaderSize = -1\nCompressedDataSize = " + std::to_string(packed.size()) + "\n"),
      "prefix" + packed));
  // CompressedData = False: CompressedDataSize is ignored.
  expect_short_voxels(read_pair(header("MET_SHORT", "scan.raw", "CompressedData = False\nCompressedDataSize = 9\n"),
                                bytes_of(short_values())));
}

TEST_F(MetaImage, ObliqueTransformMatrixIsTransposedDirection) {
  // Written by SimpleITK 2.5 for GetDirection() = (0, -1, 0, 0.6, 0, -0.8, 0.8, 0, 0.6).
  const lunakit::Mat3 expected{0, -1, 0, 0.6, 0, -0.8, 0.8, 0, 0.6};
  const std::string matrix =
      "0 0.59999999999999998 0.80000000000000004 -1 0 0 0 -0.80000000000000004 0.59999999999999998";
  for (const char* key : {"TransformMatrix", "Rotation", "Orientation"}) {
    const Volume v =
        read_pair(header("MET_SHORT", "scan.raw", std::string(key) + " = " + matrix + "\n"), bytes_of(short_values()));
    EXPECT_EQ(v.geometry.direction(), expected) << key;
  }
  // TransformMatrix is preferred over Orientation, wherever they stand.
  const Volume v =
      read_pair(header("MET_SHORT", "scan.raw", "Orientation = 1 0 0 0 1 0 0 0 1\nTransformMatrix = " + matrix + "\n"),
                bytes_of(short_values()));
  EXPECT_EQ(v.geometry.direction(), expected);
  // And the geometry uses it: voxel (i, r, c) = (0, 0, 1) lies at origin + spacing_x * column 0.
  const Volume s = read_pair(
      header("MET_SHORT", "scan.raw", "TransformMatrix = " + matrix + "\nOffset = 10 20 30\nElementSpacing = 2 3 4\n"),
      bytes_of(short_values()));
  const lunakit::Vec3 xyz = s.geometry.irc_to_xyz({0, 0, 1});
  EXPECT_DOUBLE_EQ(xyz[0], 10.0);
  EXPECT_DOUBLE_EQ(xyz[1], 20.0 + 2 * 0.6);
  EXPECT_DOUBLE_EQ(xyz[2], 30.0 + 2 * 0.8);
}

TEST_F(MetaImage, OriginAndSpacingSynonyms) {
  const Volume p =
      read_pair(header("MET_SHORT", "scan.raw", "Position = 4 5 6\nElementSize = 2 2 3\n"), bytes_of(short_values()));
  EXPECT_EQ(p.geometry.origin_xyz(), (lunakit::Vec3{4, 5, 6}));
  EXPECT_EQ(p.geometry.spacing_xyz(), (lunakit::Vec3{2, 2, 3}));
  const Volume o = read_pair(header("MET_SHORT", "scan.raw", "Origin = -1 -2 -3\n"), bytes_of(short_values()));
  EXPECT_EQ(o.geometry.origin_xyz(), (lunakit::Vec3{-1, -2, -3}));
  // Offset wins over Position, ElementSpacing over ElementSize, as in SimpleITK.
  const Volume both =
      read_pair(header("MET_SHORT", "scan.raw",
                       "Position = 4 5 6\nOffset = 1 2 3\nElementSize = 9 9 9\nElementSpacing = 2 2 2\n"),
                bytes_of(short_values()));
  EXPECT_EQ(both.geometry.origin_xyz(), (lunakit::Vec3{1, 2, 3}));
  EXPECT_EQ(both.geometry.spacing_xyz(), (lunakit::Vec3{2, 2, 2}));
}

TEST_F(MetaImage, AbsoluteDataFilePath) {
  const std::string raw = write("elsewhere.raw", bytes_of(short_values()));
  expect_short_voxels(read_metaimage(write("abs.mhd", header("MET_SHORT", raw))));
}

// ----- bad input --------------------------------------------------------------------------

TEST_F(MetaImage, MissingFiles) {
  expect_error((dir_ / "nothing.mhd").string(), "not found");
  expect_error(dir_.string(), "not a regular file");
  const std::string mhd = write("scan.mhd", header("MET_SHORT", "absent.raw"));
  expect_error(mhd, "absent.raw");
  expect_error(mhd, "not found");
}

TEST_F(MetaImage, TruncatedRawNamesExpectedAndActualBytes) {
  write("scan.raw", bytes_of(short_values()).substr(0, 47));
  const std::string mhd = write("scan.mhd", header("MET_SHORT", "scan.raw"));
  expect_error(mhd, "expected 48 bytes");
  expect_error(mhd, "found 47");
  // HeaderSize counts: 48 bytes after skipping 5 of 50 is 45.
  write("skip.raw", std::string(50, 'x'));
  expect_error(write("skip.mhd", header("MET_SHORT", "skip.raw", "HeaderSize = 5\n")), "found 45");
  // LOCAL with too few bytes.
  expect_error(write("short.mha", header("MET_SHORT", "LOCAL") + std::string(10, 'x')), "found 10");
  // Empty data file.
  write("empty.raw", "");
  expect_error(write("empty.mhd", header("MET_FLOAT", "empty.raw")), "expected 96 bytes");
}

TEST_F(MetaImage, UnknownElementTypeIsNamed) {
  write("scan.raw", std::string(1000, '\0'));
  for (const char* type : {"MET_DOUBLE", "MET_INT", "MET_CHAR", "short"}) {
    expect_error(write("scan.mhd", header(type, "scan.raw")), type);
  }
}

TEST_F(MetaImage, BadDimensions) {
  write("scan.raw", std::string(1000, '\0'));
  expect_error(write("a.mhd", "NDims = 2\nDimSize = 4 3\nElementType = MET_SHORT\nElementDataFile = scan.raw\n"),
               "NDims is 2");
  expect_error(write("b.mhd", "NDims = 4\nDimSize = 4 3 2 1\nElementType = MET_SHORT\nElementDataFile = scan.raw\n"),
               "NDims is 4");
  const std::string base = "NDims = 3\nElementType = MET_SHORT\nElementDataFile = scan.raw\n";
  expect_error(write("c.mhd", "DimSize = 4 0 2\n" + base), "DimSize must be positive");
  expect_error(write("d.mhd", "DimSize = 4 -3 2\n" + base), "DimSize must be positive");
  expect_error(write("e.mhd", "DimSize = 4 3\n" + base), "DimSize must hold 3");
  expect_error(write("f.mhd", "DimSize = 4 3 2 1\n" + base), "DimSize must hold 3");
  expect_error(write("g.mhd", "DimSize = 4096 4096 1025\n" + base), "more than 2^34 voxels");
  expect_error(write("h.mhd", "DimSize = 9223372036854775807 9223372036854775807 2\n" + base), "more than 2^34");
  // Exactly 2^34 voxels is allowed by the size check; the data file is then too short.
  expect_error(write("i.mhd", "DimSize = 4096 4096 1024\n" + base), "expected 34359738368 bytes");
}

TEST_F(MetaImage, NonNumericFieldsNameTheKey) {
  write("scan.raw", bytes_of(short_values()));
  const std::string base = "NDims = 3\nElementType = MET_SHORT\nElementDataFile = scan.raw\n";
  expect_error(write("a.mhd", "DimSize = 4 three 2\n" + base), "DimSize is not numeric");
  expect_error(write("b.mhd", "DimSize = 4 3 2.0\n" + base), "DimSize is not numeric");
  expect_error(write("c.mhd", "NDims = three\nDimSize = 4 3 2\nElementType = MET_SHORT\nElementDataFile = scan.raw\n"),
               "NDims is not numeric");
  const std::string dims = "DimSize = 4 3 2\n" + base;
  expect_error(write("d.mhd", "ElementSpacing = 1 1 x\n" + dims), "ElementSpacing is not numeric");
  expect_error(write("e.mhd", "ElementSpacing = 1 1\n" + dims), "ElementSpacing must hold 3");
  expect_error(write("f.mhd", "Offset = 1,2,3\n" + dims), "Offset is not numeric");
  expect_error(write("g.mhd", "Position = 1 2 3mm\n" + dims), "Position is not numeric");
  expect_error(write("h.mhd", "TransformMatrix = 1 0 0 0 1 0 0 0\n" + dims), "TransformMatrix must hold 9");
  expect_error(write("i.mhd", "TransformMatrix = 1 0 0 0 1 0 0 0 one\n" + dims), "TransformMatrix is not numeric");
  expect_error(write("j.mhd", "HeaderSize = some\n" + dims), "HeaderSize is not numeric");
  expect_error(write("k.mhd", "CompressedData = True\nCompressedDataSize = big\n" + dims),
               "CompressedDataSize is not numeric");
  expect_error(write("l.mhd", "ElementByteOrderMSB = Yes\n" + dims), "ElementByteOrderMSB must be True or False");
  expect_error(write("m.mhd", "CompressedData = maybe\n" + dims), "CompressedData must be True or False");
  expect_error(write("n.mhd", "HeaderSize = -2\n" + dims), "HeaderSize must be -1");
  expect_error(write("o.mhd", "ElementSpacing = 1 0 1\n" + dims), "ElementSpacing must hold 3 finite positive numbers");
  expect_error(write("p.mhd", "ElementSpacing = 1 nan 1\n" + dims),
               "ElementSpacing must hold 3 finite positive numbers");
  expect_error(write("q.mhd", "Offset = 1 inf 1\n" + dims), "Offset must hold 3 finite numbers");
}

TEST_F(MetaImage, MissingRequiredKeys) {
  write("scan.raw", bytes_of(short_values()));
  expect_error(write("a.mhd", "DimSize = 4 3 2\nElementType = MET_SHORT\nElementDataFile = scan.raw\n"),
               "missing required header key NDims");
  expect_error(write("b.mhd", "NDims = 3\nElementType = MET_SHORT\nElementDataFile = scan.raw\n"),
               "missing required header key DimSize");
  expect_error(write("c.mhd", "NDims = 3\nDimSize = 4 3 2\nElementDataFile = scan.raw\n"),
               "missing required header key ElementType");
  expect_error(write("d.mhd", "NDims = 3\nDimSize = 4 3 2\nElementType = MET_SHORT\n"),
               "missing required header key ElementDataFile");
  expect_error(write("e.mhd", ""), "missing required header key ElementDataFile");
  expect_error(write("f.mhd", header("MET_SHORT", "")), "ElementDataFile is empty");
}

TEST_F(MetaImage, MalformedHeaderLines) {
  write("scan.raw", bytes_of(short_values()));
  expect_error(write("a.mhd", "NDims 3\n" + header("MET_SHORT", "scan.raw")), "header line 1 is not 'Key = Value'");
  expect_error(write("b.mhd", " = 3\n" + header("MET_SHORT", "scan.raw")), "header line 1 has no key");
  expect_error(write("c.mhd", header("MET_SHORT", "scan.raw", "Offset = 1 2 3\nOffset = 1 2 3\n")),
               "header key Offset appears twice");
  // A raw file given as the header.
  expect_error(write("d.mhd", bytes_of(std::vector<int16_t>(kVoxels, 0))), "not a MetaImage header");
  expect_error(write("e.mhd", std::string(2 << 20, 'a')), "not a MetaImage header");
}

TEST_F(MetaImage, UnsupportedVariants) {
  write("scan.raw", bytes_of(short_values()));
  expect_error(write("a.mhd", header("MET_SHORT", "scan.raw", "ElementNumberOfChannels = 3\n")),
               "ElementNumberOfChannels is 3");
  expect_error(write("b.mhd", header("MET_SHORT", "scan.raw", "BinaryData = False\n")), "ASCII");
  expect_error(write("c.mhd", header("MET_SHORT", "LIST")), "multi-file");
  expect_error(write("d.mhd", header("MET_SHORT", "slice%03d.raw 1 2 1")), "multi-file");
}

TEST_F(MetaImage, SingularDirectionIsPrefixedWithThePath) {
  write("scan.raw", bytes_of(short_values()));
  expect_error(write("a.mhd", header("MET_SHORT", "scan.raw", "TransformMatrix = 1 0 0 1 0 0 0 0 1\n")),
               "direction matrix is singular");
  expect_error(write("b.mhd", header("MET_SHORT", "scan.raw", "TransformMatrix = 0 0 0 0 0 0 0 0 0\n")),
               "direction matrix is singular");
}

TEST_F(MetaImage, CorruptCompressedData) {
  const std::string packed = compressed(bytes_of(short_values()));
  // Garbage that is not a zlib stream.
  write("garbage.raw", std::string(40, '\x55'));
  expect_error(write("a.mhd", header("MET_SHORT", "garbage.raw", "CompressedData = True\n")),
               "corrupt compressed data");
  // A stream cut short.
  write("cut.raw", packed.substr(0, packed.size() / 2));
  expect_error(write("b.mhd", header("MET_SHORT", "cut.raw", "CompressedData = True\n")), "corrupt compressed data");
  // A flipped byte in the middle (the adler32 check, at least, catches it).
  std::string flipped = packed;
  flipped[flipped.size() - 2] ^= 0x5a;
  write("flip.raw", flipped);
  expect_error(write("c.mhd", header("MET_SHORT", "flip.raw", "CompressedData = True\n")), "corrupt compressed data");
  // A stream that holds less, or more, than DimSize says.
  write("small.raw", compressed(bytes_of(short_values()).substr(0, 40)));
  expect_error(write("d.mhd", header("MET_SHORT", "small.raw", "CompressedData = True\n")),
               "inflates to 40 bytes, expected 48");
  write("big.raw", compressed(bytes_of(short_values()) + "xx"));
  expect_error(write("e.mhd", header("MET_SHORT", "big.raw", "CompressedData = True\n")), "inflates to more than");
  // CompressedDataSize larger than the file.
  write("ok.raw", packed);
  expect_error(
      write("f.mhd",
            header("MET_SHORT", "ok.raw",
                   "CompressedData = True\nCompressedDataSize = " + std::to_string(packed.size() + 10) + "\n")),
      "expected " + std::to_string(packed.size() + 10) + " bytes of compressed voxel data");
  expect_error(write("g.mhd", header("MET_SHORT", "ok.raw", "CompressedData = True\nHeaderSize = -1\n")),
               "needs CompressedDataSize");
  write("none.raw", "");
  expect_error(write("h.mhd", header("MET_SHORT", "none.raw", "CompressedData = True\n")), "no compressed voxel data");
}
