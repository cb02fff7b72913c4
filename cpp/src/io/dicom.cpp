// DICOM series -> int16 HU Volume through GDCM (see lunakit/dicom.h for the rules).
#include "lunakit/dicom.h"

#include <gdcmDirectory.h>
#include <gdcmImage.h>
#include <gdcmImageReader.h>
#include <gdcmScanner.h>
#include <gdcmTag.h>
#include <gdcmTrace.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>

#include "dicom_file.h"
#include "lunakit/error.h"

namespace lunakit {

namespace fs = std::filesystem;

namespace {

const gdcm::Tag kSeriesUid(0x0020, 0x000e);
const gdcm::Tag kSeriesDescription(0x0008, 0x103e);
const gdcm::Tag kPosition(0x0020, 0x0032);     // ImagePositionPatient
const gdcm::Tag kOrientation(0x0020, 0x0037);  // ImageOrientationPatient
const gdcm::Tag kPixelSpacing(0x0028, 0x0030);

// GDCM prints warnings about odd files to stderr; lunakit reports problems through Error.
struct QuietGdcm {
  QuietGdcm() {
    gdcm::Trace::WarningOff();
    gdcm::Trace::ErrorOff();
    gdcm::Trace::DebugOff();
  }
};

std::string trimmed(const char* value) {
  if (value == nullptr) return {};
  std::string text(value);
  const size_t end = text.find_last_not_of(std::string(" \t\r\n\0", 5));
  if (end == std::string::npos) return {};
  const size_t start = text.find_first_not_of(" \t\r\n");
  return text.substr(start, end - start + 1);
}

// A DICOM multi-valued decimal string "a\b\c" with exactly `count` values; empty on a mismatch.
std::vector<double> decimals(const std::string& text, size_t count) {
  std::vector<double> values;
  std::stringstream parts(text);
  std::string part;
  while (std::getline(parts, part, '\\')) {
    const std::string item = trimmed(part.c_str());
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    if (item.empty() || end != item.c_str() + item.size() || !std::isfinite(v)) return {};
    values.push_back(v);
  }
  if (values.size() != count) return {};
  return values;
}

std::string number(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

struct Scan {
  gdcm::Scanner scanner;
  std::map<std::string, std::vector<std::string>> files_by_series;  // uid -> files (sorted by name)
};

// A file named *.dcm (any case) claims to be DICOM: one that is not is refused, not skipped.
bool is_dcm(const std::string& file) {
  std::string ext = fs::path(file).extension().string();
  for (char& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return ext == ".dcm";
}

void scan_dir(const std::string& dir, Scan& scan) {
  static const QuietGdcm quiet;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw Error(dir + (fs::exists(dir, ec) ? ": not a directory" : ": no such file or directory"));
  }
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.is_regular_file(ec)) files.push_back(entry.path().string());
  }
  if (ec) throw Error(dir + ": cannot list (" + ec.message() + ")");
  std::sort(files.begin(), files.end());
  // Only complete Part-10 files reach GDCM (it aborts on some cut ones); others are not DICOM.
  std::vector<std::string> dicom;
  for (const std::string& file : files) {
    try {
      const bool part10 = dicom_file::check(file);
      if (!part10 && is_dcm(file)) {
        throw Error(fs::path(file).filename().string() + ": not a DICOM file (too short, or no 'DICM' at byte 128)");
      }
      if (part10) dicom.push_back(file);
    } catch (const Error& e) {
      throw Error(dir + ": " + e.what());
    }
  }
  files = std::move(dicom);
  for (const gdcm::Tag& tag : {kSeriesUid, kSeriesDescription, kPosition, kOrientation, kPixelSpacing}) {
    scan.scanner.AddTag(tag);
  }
  if (!files.empty() && !scan.scanner.Scan(files)) throw Error(dir + ": GDCM could not scan the folder");
  for (const std::string& file : files) {
    if (!scan.scanner.IsKey(file.c_str())) continue;  // not DICOM
    const std::string uid = trimmed(scan.scanner.GetValue(file.c_str(), kSeriesUid));
    if (uid.empty()) continue;  // DICOMDIR and other non-image objects
    scan.files_by_series[uid].push_back(file);
  }
}

std::string series_list(const Scan& scan) {
  std::string out;
  for (const auto& [uid, files] : scan.files_by_series) {
    out += (out.empty() ? "" : ", ") + uid + " (" + std::to_string(files.size()) + " files)";
  }
  return out;
}

struct Slice {
  std::string file;
  double position = 0.0;  // along the slice normal
  std::array<double, 3> ipp{};
};

// Stored values of one slice as HU, rounded, appended to out (rows * cols values).
void read_slice(const std::string& file, const std::string& dir, size_t rows, size_t cols, int16_t* out) {
  gdcm::ImageReader reader;
  reader.SetFileName(file.c_str());
  if (!reader.Read()) throw Error(dir + ": GDCM cannot read the image in " + fs::path(file).filename().string());
  const gdcm::Image& image = reader.GetImage();
  const std::string name = fs::path(file).filename().string();
  if (image.GetNumberOfDimensions() == 3 && image.GetDimension(2) > 1) {
    throw Error(dir + ": " + name + " is a multi-frame image (" + std::to_string(image.GetDimension(2)) +
                " frames); only single-frame slices are supported");
  }
  if (image.GetColumns() != cols || image.GetRows() != rows) {
    throw Error(dir + ": slices have different sizes (" + std::to_string(cols) + " x " + std::to_string(rows) +
                " and " + std::to_string(image.GetColumns()) + " x " + std::to_string(image.GetRows()) + " in " + name +
                ")");
  }
  const gdcm::PixelFormat& format = image.GetPixelFormat();
  if (format.GetSamplesPerPixel() != 1) throw Error(dir + ": " + name + " is not a grayscale image");
  const size_t count = rows * cols;

  std::vector<char> buffer(image.GetBufferLength());
  if (!image.GetBuffer(buffer.data())) throw Error(dir + ": GDCM cannot decode the pixels of " + name);
  const double slope = image.GetSlope();
  const double intercept = image.GetIntercept();
  auto convert = [&](auto typed_zero) {
    using T = decltype(typed_zero);
    if (buffer.size() < count * sizeof(T)) throw Error(dir + ": " + name + " holds fewer pixels than its size says");
    const T* stored = reinterpret_cast<const T*>(buffer.data());
    for (size_t k = 0; k < count; ++k) {
      const double hu = std::nearbyint(static_cast<double>(stored[k]) * slope + intercept);
      if (!(hu >= -32768.0 && hu <= 32767.0)) {
        throw Error(dir + ": " + name + ": HU value " + number(hu) + " does not fit int16");
      }
      out[k] = static_cast<int16_t>(hu);
    }
  };
  switch (format.GetScalarType()) {
    case gdcm::PixelFormat::UINT8:
      convert(uint8_t{});
      break;
    case gdcm::PixelFormat::INT8:
      convert(int8_t{});
      break;
    case gdcm::PixelFormat::UINT12:
    case gdcm::PixelFormat::UINT16:
      convert(uint16_t{});
      break;
    case gdcm::PixelFormat::INT12:
    case gdcm::PixelFormat::INT16:
      convert(int16_t{});
      break;
    case gdcm::PixelFormat::UINT32:
      convert(uint32_t{});
      break;
    case gdcm::PixelFormat::INT32:
      convert(int32_t{});
      break;
    case gdcm::PixelFormat::FLOAT32:
      convert(float{});
      break;
    case gdcm::PixelFormat::FLOAT64:
      convert(double{});
      break;
    default:
      throw Error(dir + ": " + name + " has an unsupported pixel format");
  }
}

}  // namespace

std::vector<DicomSeriesInfo> list_dicom_series(const std::string& dir) {
  Scan scan;
  scan_dir(dir, scan);
  std::vector<DicomSeriesInfo> out;
  for (const auto& [uid, files] : scan.files_by_series) {
    out.push_back({uid, static_cast<int64_t>(files.size()),
                   trimmed(scan.scanner.GetValue(files[0].c_str(), kSeriesDescription))});
  }
  return out;
}

DicomScan read_dicom_series(const std::string& dir, const std::string& series_uid) {
  Scan scan;
  scan_dir(dir, scan);
  if (scan.files_by_series.empty()) throw Error("no DICOM series in " + dir);
  std::string uid = series_uid;
  if (uid.empty()) {
    if (scan.files_by_series.size() > 1) {
      throw Error(dir + ": " + std::to_string(scan.files_by_series.size()) +
                  " DICOM series, pick one with --series-uid: " + series_list(scan));
    }
    uid = scan.files_by_series.begin()->first;
  } else if (scan.files_by_series.count(uid) == 0) {
    throw Error(dir + ": no series " + uid + "; found: " + series_list(scan));
  }
  const std::vector<std::string>& files = scan.files_by_series.at(uid);

  // Orientation and pixel spacing: present, and the same on every slice.
  auto value = [&](const std::string& file, const gdcm::Tag& tag) {
    return trimmed(scan.scanner.GetValue(file.c_str(), tag));
  };
  const std::string first_name = fs::path(files[0]).filename().string();
  const std::vector<double> iop = decimals(value(files[0], kOrientation), 6);
  if (iop.empty()) throw Error(dir + ": " + first_name + " lacks a valid ImageOrientationPatient (0020,0037)");
  const std::vector<double> pixel_spacing = decimals(value(files[0], kPixelSpacing), 2);
  if (pixel_spacing.empty()) throw Error(dir + ": " + first_name + " lacks a valid PixelSpacing (0028,0030)");
  const Vec3 row_dir{iop[0], iop[1], iop[2]};  // direction of increasing column index
  const Vec3 col_dir{iop[3], iop[4], iop[5]};  // direction of increasing row index
  const Vec3 normal{row_dir[1] * col_dir[2] - row_dir[2] * col_dir[1],
                    row_dir[2] * col_dir[0] - row_dir[0] * col_dir[2],
                    row_dir[0] * col_dir[1] - row_dir[1] * col_dir[0]};

  std::vector<Slice> slices;
  for (const std::string& file : files) {
    const std::string name = fs::path(file).filename().string();
    const std::vector<double> ipp = decimals(value(file, kPosition), 3);
    if (ipp.empty()) throw Error(dir + ": " + name + " lacks a valid ImagePositionPatient (0020,0032)");
    const std::vector<double> o = decimals(value(file, kOrientation), 6);
    for (size_t k = 0; k < 6 && !o.empty(); ++k) {
      if (std::fabs(o[k] - iop[k]) > 1e-4) throw Error(dir + ": slices have different orientations (" + name + ")");
    }
    if (o.empty()) throw Error(dir + ": " + name + " lacks a valid ImageOrientationPatient (0020,0037)");
    const std::vector<double> ps = decimals(value(file, kPixelSpacing), 2);
    if (ps.empty() || std::fabs(ps[0] - pixel_spacing[0]) > 1e-6 || std::fabs(ps[1] - pixel_spacing[1]) > 1e-6) {
      throw Error(dir + ": slices have different pixel spacings (" + name + ")");
    }
    slices.push_back({file, ipp[0] * normal[0] + ipp[1] * normal[1] + ipp[2] * normal[2], {ipp[0], ipp[1], ipp[2]}});
  }
  std::stable_sort(slices.begin(), slices.end(),
                   [](const Slice& a, const Slice& b) { return a.position < b.position; });

  // Slice spacing from the positions; every step within 10% of it (a gap is a missing slice).
  const size_t n = slices.size();
  double spacing_z = 1.0;
  if (n > 1) {
    const Vec3 span{slices[n - 1].ipp[0] - slices[0].ipp[0], slices[n - 1].ipp[1] - slices[0].ipp[1],
                    slices[n - 1].ipp[2] - slices[0].ipp[2]};
    spacing_z = std::sqrt(span[0] * span[0] + span[1] * span[1] + span[2] * span[2]) / static_cast<double>(n - 1);
    double min_step = INFINITY, max_step = 0.0;
    for (size_t k = 1; k < n; ++k) {
      const double step = slices[k].position - slices[k - 1].position;
      min_step = std::min(min_step, step);
      max_step = std::max(max_step, step);
    }
    if (min_step <= 1e-6 * std::max(1.0, spacing_z)) {
      throw Error(dir + ": two slices share one position (duplicate slices?)");
    }
    if (std::max(std::fabs(max_step - spacing_z), std::fabs(min_step - spacing_z)) > 0.1 * spacing_z) {
      throw Error(dir + ": slices are not evenly spaced (steps " + number(min_step) + ".." + number(max_step) +
                  " mm, spacing " + number(spacing_z) + " mm; missing or duplicate slices?)");
    }
  }

  // Pixels, slice by slice; the first slice fixes the size.
  gdcm::ImageReader first;
  first.SetFileName(slices[0].file.c_str());
  if (!first.Read())
    throw Error(dir + ": GDCM cannot read the image in " + fs::path(slices[0].file).filename().string());
  const size_t cols = first.GetImage().GetColumns();
  const size_t rows = first.GetImage().GetRows();
  if (rows == 0 || cols == 0) throw Error(dir + ": " + fs::path(slices[0].file).filename().string() + " has no pixels");
  torch::Tensor voxels =
      torch::empty({static_cast<int64_t>(n), static_cast<int64_t>(rows), static_cast<int64_t>(cols)}, torch::kInt16);
  int16_t* data = voxels.data_ptr<int16_t>();
  for (size_t k = 0; k < n; ++k) read_slice(slices[k].file, dir, rows, cols, data + k * rows * cols);

  const Mat3 direction{row_dir[0], col_dir[0], normal[0],  row_dir[1], col_dir[1],
                       normal[1],  row_dir[2], col_dir[2], normal[2]};
  Geometry geometry;
  try {
    geometry = Geometry(slices[0].ipp, {pixel_spacing[1], pixel_spacing[0], spacing_z}, direction);
  } catch (const Error& e) {
    throw Error(dir + ": " + e.what());
  }
  std::vector<std::string> slice_files;
  for (const Slice& slice : slices) slice_files.push_back(slice.file);
  return {Volume{voxels, geometry}, uid, slice_files};
}

}  // namespace lunakit
