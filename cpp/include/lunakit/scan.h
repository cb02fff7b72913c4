#pragma once
// Scans as luna_infer and the Python bindings read them: a .mhd / .mha file (lunakit's own
// MetaImage reader) or a DICOM series folder (GDCM), as python lunakit.io.ct.load reads them.
#include <string>
#include <vector>

#include "lunakit/volume.h"

namespace lunakit {

struct Scan {
  Volume volume;                         // [I, R, C]: int16 HU from load_scan; read_scan keeps a float32 file's values
  std::string series_uid;                // DICOM: the series read; MetaImage: the file name without its extension
  std::string source;                    // the path as Python's pathlib prints it (clean_path)
  std::vector<std::string> dicom_files;  // DICOM: the series' files in slice order (I); MetaImage: none
};

// The scan at `path`, its voxels as stored (int16, or float32 for a float MetaImage). series_uid
// (non-empty) picks one series of a DICOM folder; for a MetaImage it must equal the file's stem.
// Throws lunakit::Error "<path>: <problem>" for a missing path, an unknown extension, another
// series, and whatever the readers refuse (dicom.h, metaimage.h).
Scan read_scan(const std::string& path, const std::string& series_uid = "");

// read_scan, then float voxels turned into int16 HU as lunakit.io.ct.load turns them: NaN or
// infinity refused, rounded half to even, refused when they do not fit int16.
Scan load_scan(const std::string& path, const std::string& series_uid = "");

// The path as Python's pathlib prints it: no empty or "." components, no trailing slash.
std::string clean_path(const std::string& path);

}  // namespace lunakit
