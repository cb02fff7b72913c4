// libFuzzer target: the DICOM series reader (GDCM behind lunakit::read_dicom_series and
// list_dicom_series) on a folder of two slices: the input, and the input with its first half
// repeated, so both the one-file and the series paths (sorting, spacing checks) are reached.
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "lunakit/dicom.h"
#include "lunakit/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = lunakit_fuzz::scratch_dir() + "/series";
  static const bool made = [&] { return ::mkdir(dir.c_str(), 0700) == 0; }();
  (void)made;
  lunakit_fuzz::write_file(dir + "/a.dcm", data, size);
  std::vector<uint8_t> second(data, data + size);
  second.insert(second.end(), data, data + size / 2);
  lunakit_fuzz::write_file(dir + "/b.dcm", second.data(), second.size());
  try {
    lunakit::list_dicom_series(dir);
    lunakit::read_dicom_series(dir);
  } catch (const lunakit::Error&) {
  }
  return 0;
}
