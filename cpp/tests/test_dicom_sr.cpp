// lunakit::findings_sr (DCMTK): a Part 10 file that names what it must, and bad sources refused.
// The SR's content is read back with pydicom and compared with the Python SR in
// tests/pacs/test_cpp_sr.py; here only what needs no DICOM parser.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "lunakit/dicom_sr.h"
#include "lunakit/error.h"

namespace fs = std::filesystem;

namespace {

const char* kSeries = "1.3.6.1.4.1.14519.5.2.1.7085.2626.242193282649561899185427104083";
const char* kFrame = "1.3.6.1.4.1.14519.5.2.1.7085.2626.118309119521421997707953128381";

std::vector<std::string> real_ct_files() {
  const char* root = std::getenv("LUNAKIT_TEST_DATA");
  std::vector<std::string> files;
  if (root == nullptr) return files;
  const fs::path dir = fs::path(root) / "ct" / "C3N-00247-chest-ct";
  if (!fs::is_directory(dir)) return files;
  for (const auto& entry : fs::directory_iterator(dir)) files.push_back(entry.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

lunakit::FindingsDocument document(const std::string& series) {
  lunakit::FindingsDocument d;
  d.series_uid = series;
  d.model_sha256 = {{"seg", std::string(64, 'a')}, {"cls", std::string(64, 'b')}};
  return d;
}

lunakit::Finding finding(double p_nodule) {
  lunakit::Finding f;
  f.center_xyz = {-100.25, 20.5, -150.125};
  f.diameter_mm = 7.25;
  f.p_nodule = p_nodule;
  return f;
}

bool has(const std::string& bytes, const std::string& part) { return bytes.find(part) != std::string::npos; }

void expect_error(const std::vector<std::string>& files, const std::string& series, const std::string& part) {
  try {
    lunakit::findings_sr(files, document(series), {finding(0.5)});
    ADD_FAILURE() << "no error; expected " << part;
  } catch (const lunakit::Error& e) {
    EXPECT_TRUE(has(e.what(), part)) << e.what();
  }
}

}  // namespace

TEST(DicomSr, NamesTheFindingsAndTheSource) {
  const std::vector<std::string> files = real_ct_files();
  if (files.empty()) GTEST_SKIP() << "LUNAKIT_TEST_DATA is not set";
  lunakit::Finding second = finding(0.25);
  second.p_malignant = 0.125;
  const std::string sr = lunakit::findings_sr(files, document(kSeries), {finding(0.75), second});
  ASSERT_GT(sr.size(), 132u);
  EXPECT_EQ(sr.substr(128, 4), "DICM");
  for (const char* part : {"1.2.840.10008.5.1.4.1.1.88.34", kSeries, kFrame, "finding 1", "finding 2", "99LUNAKIT",
                           "p_nodule", "p_malignant", "0.125", "7.25", "seg aaaaaaaaaaaa", "C3N-00247"}) {
    EXPECT_TRUE(has(sr, part)) << part;
  }
  EXPECT_FALSE(has(sr, "finding 3"));
  // No findings: one TID 1501 group.
  const std::string empty = lunakit::findings_sr(files, document(kSeries), {});
  EXPECT_TRUE(has(empty, "no findings"));
  EXPECT_FALSE(has(empty, "finding 1"));
}

TEST(DicomSr, RefusesBadSources) {
  expect_error({}, kSeries, "no source files");
  const fs::path junk = fs::temp_directory_path() / "lunakit_test_dicom_sr_junk.dcm";
  std::ofstream(junk) << "not DICOM";
  expect_error({junk.string()}, kSeries, junk.string() + ": DCMTK cannot read");
  fs::remove(junk);
  const std::vector<std::string> files = real_ct_files();
  if (files.empty()) GTEST_SKIP() << "LUNAKIT_TEST_DATA is not set";
  expect_error(files, "1.2.3", "not of series 1.2.3");
}

TEST(DicomSr, WritesNothingOnFailure) {
  const fs::path dir = fs::temp_directory_path() / "lunakit_test_dicom_sr_out";
  fs::remove_all(dir);
  fs::create_directories(dir);
  EXPECT_THROW(lunakit::write_findings_sr((dir / "sr.dcm").string(), {}, document(kSeries), {}), lunakit::Error);
  EXPECT_TRUE(fs::is_empty(dir));
  fs::remove_all(dir);
}
