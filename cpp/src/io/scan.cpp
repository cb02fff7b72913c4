// Scan loading shared by luna_infer and the Python bindings (lunakit/scan.h).
#include "lunakit/scan.h"

#include <cctype>
#include <cstdio>
#include <filesystem>

#include "lunakit/dicom.h"
#include "lunakit/error.h"
#include "lunakit/metaimage.h"

namespace lunakit {
namespace {

namespace fs = std::filesystem;

bool has_suffix(const std::string& name, const std::string& suffix) {
  if (name.size() <= suffix.size()) return false;
  std::string tail = name.substr(name.size() - suffix.size());
  for (char& ch : tail) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return tail == suffix;
}

// int16 HU from a float volume, as lunakit.io.ct.load converts one.
void to_int16_hu(Scan& scan) {
  torch::Tensor& v = scan.volume.voxels;
  if (v.scalar_type() == torch::kInt16) return;
  const torch::Tensor rounded = torch::round(v.to(torch::kFloat64));
  const double lo = rounded.min().item<double>(), hi = rounded.max().item<double>();
  if (lo < -32768.0 || hi > 32767.0) {
    char text[128];
    std::snprintf(text, sizeof text, ": HU values %g..%g do not fit int16", lo, hi);
    throw Error(scan.source + text);
  }
  v = rounded.to(torch::kInt16);
}

}  // namespace

std::string clean_path(const std::string& path) {
  std::string out = path.rfind('/', 0) == 0 ? "/" : "";
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    const std::string part = path.substr(start, end - start);
    if (!part.empty() && part != ".") out += (out.empty() || out == "/" ? "" : "/") + part;
    start = end + 1;
  }
  return out.empty() ? "." : out;
}

// The series UID of a MetaImage is its file name without the extension, as the LUNA16 files are named.
Scan read_scan(const std::string& path, const std::string& series_uid) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error(path + ": not found (no such file or directory)");
  if (fs::is_directory(path, ec)) {
    DicomScan dicom = read_dicom_series(path, series_uid);
    return {dicom.volume, dicom.series_uid, clean_path(path), dicom.slice_files};
  }
  if (!has_suffix(path, ".mhd") && !has_suffix(path, ".mha")) {
    throw Error(path + ": unknown extension, expected a DICOM directory or a .mhd/.mha file");
  }
  const std::string stem = fs::path(path).stem().string();
  if (!series_uid.empty() && series_uid != stem) {
    throw Error(path + ": holds series " + stem + ", not the requested " + series_uid);
  }
  Scan scan{read_metaimage(path), stem, clean_path(path)};
  // No reader of a scan accepts NaN or infinite voxels, `info` included (as lunakit.io.ct.load).
  const torch::Tensor& v = scan.volume.voxels;
  if (v.is_floating_point() && !torch::isfinite(v).all().item<bool>()) {
    throw Error(scan.source + ": voxel values include NaN or infinity");
  }
  return scan;
}

Scan load_scan(const std::string& path, const std::string& series_uid) {
  Scan scan = read_scan(path, series_uid);
  to_int16_hu(scan);
  return scan;
}

}  // namespace lunakit
