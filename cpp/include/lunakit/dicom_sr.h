#pragma once
// Findings as a DICOM Structured Report (DCMTK's dcmsr; docs/pacs.md): a Comprehensive 3D SR
// holding a TID 1500 "Imaging Measurement Report", the same content as
// python/lunakit/io/dicom_results.py's build_sr writes with highdicom:
//   - observation context: a device observer "lunakit", model "lunakit <version>";
//     procedure reported LN 25045-6 "CT unspecified body region";
//   - "Imaging Measurements": one TID 1411 measurement group per finding, in the given order
//     (findings.json's): tracking identifier "finding K" (K from 1) and a tracking UID, finding
//     category SCT 49755003, finding SCT 27925004 "Nodule", the algorithm (name lunakit, its
//     version, parameters "kind sha256[:12], ..." of the models), the diameter (SCT 81827009,
//     mm), p_nodule and p_malignant (scheme 99LUNAKIT, UCUM "1"; p_malignant only when set),
//     geometric purpose DCM 111010 "Center", the center as an SCOORD3D POINT (DCM 121231
//     "Volume Surface") in the source's Frame of Reference, and the source series UID
//     (DCM 121232); no findings: one TID 1501 group tracked as "no findings";
//   - every source instance as evidence (Current Requested Procedure Evidence); the patient,
//     study, patient-study and clinical-trial attributes of the first slice copied as they are
//     (the attributes highdicom copies for a CT source); a new series (number: the source's
//     + 1001), instance number 1, manufacturer lunakit, series "lunakit nodule findings".
// The public interface names no DCMTK type.
#include <string>
#include <vector>

#include "lunakit/finding.h"

namespace lunakit {

inline constexpr const char* kFindingsSrFile = "findings-sr.dcm";

// The SR as the bytes of a DICOM Part 10 file (explicit VR little endian). source_files: the
// source series' files in slice order (I), as read_dicom_series lists them (DicomScan::slice_files);
// document: series_uid (checked against every file) and model_sha256. Throws lunakit::Error
// "<file>: <problem>" for a file DCMTK cannot read, of another series, not CT, or lacking a
// Study / SOP Instance / Frame of Reference UID, and for no files.
std::string findings_sr(const std::vector<std::string>& source_files, const FindingsDocument& document,
                        const std::vector<Finding>& findings);

// findings_sr written to `path` (a temporary file renamed into place: nothing on failure).
void write_findings_sr(const std::string& path, const std::vector<std::string>& source_files,
                       const FindingsDocument& document, const std::vector<Finding>& findings);

}  // namespace lunakit
