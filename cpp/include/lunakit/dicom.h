#pragma once
// DICOM series input (through GDCM): a folder of single-frame CT slices -> int16 HU Volume.
//
// Files of the folder (not its subfolders) without the DICOM Part-10 marker ("DICM" at byte
// 128) are ignored, unless named *.dcm. Every Part-10 file must be complete: its meta
// information and every element of its data set inside the file, its pixel data as long as
// rows x columns x bits allocated say; one cut short is refused, naming it, before GDCM reads
// it (docs/design.md, "Errors"). The files are grouped by SeriesInstanceUID (0020,000E). The chosen series' slices are
// sorted by their ImagePositionPatient (0020,0032) projected on the slice normal (row cosine x column cosine of
// ImageOrientationPatient (0020,0037)), ascending, as ITK's GDCM series reader sorts them, so the result matches python
// lunakit.io.ct.load:
//   origin_xyz  = ImagePositionPatient of the first sorted slice
//   spacing_xyz = (PixelSpacing column spacing, row spacing, mean step between slice positions)
//   direction   = columns (row cosine, column cosine, slice normal)
//   voxels      = stored value * RescaleSlope + RescaleIntercept, rounded to int16 HU
// Refused with lunakit::Error "<dir>: <problem>": no DICOM files, several series without a
// chosen one (the message lists them), an unknown series UID, slices of different sizes,
// orientations or pixel spacings, duplicate slice positions, uneven steps (a step more than
// 10% off the mean: a missing slice), multi-frame or colour images, and HU beyond int16.
#include <cstdint>
#include <string>
#include <vector>

#include "lunakit/volume.h"

namespace lunakit {

struct DicomSeriesInfo {
  std::string series_uid;
  int64_t file_count = 0;
  std::string description;  // SeriesDescription (0008,103E), may be empty
};

// The series in a folder, sorted by UID. Throws lunakit::Error for a folder that does not exist.
std::vector<DicomSeriesInfo> list_dicom_series(const std::string& dir);

struct DicomScan {
  Volume volume;                         // int16 HU [I, R, C]
  std::string series_uid;                // of the series read
  std::vector<std::string> slice_files;  // the series' files in slice order (I); for DICOM results (dicom_sr.h)
};

// Reads one series of `dir`: the only one, or the one named by series_uid (non-empty).
DicomScan read_dicom_series(const std::string& dir, const std::string& series_uid = "");

}  // namespace lunakit
