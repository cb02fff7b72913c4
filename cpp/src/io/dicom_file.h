#pragma once
// The structure of one DICOM file, checked before GDCM reads it: GDCM asserts (aborts) on some
// files cut short, and reads pixel data cut short as if complete. Rule: docs/design.md, "Errors".
#include <string>

namespace lunakit::dicom_file {

// Whether the file is DICOM Part 10 ("DICM" at byte 128; without it: false, not an error). Walks
// its meta information and every element of its data set (values skipped); throws lunakit::Error
// "<file name>: <problem>" when one does not fit in the file, or when the pixel data are shorter
// than rows x columns x bits allocated say.
bool check(const std::string& file);

}  // namespace lunakit::dicom_file
