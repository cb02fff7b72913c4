#pragma once
// Findings (docs/design.md, "Findings") and the files they go to: findings.json, the same document
// python/lunakit/io/findings.py writes, and the LUNA16 submission CSV
// `seriesuid,coordX,coordY,coordZ,probability`.
#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "lunakit/bundle.h"
#include "lunakit/geometry.h"

namespace lunakit {

// One candidate: where it is, how big, and what the classifiers think of it.
struct Finding {
  Vec3 center_xyz{};  // mm, patient space
  Vec3 center_irc{};  // voxels, center of mass weighted by clip(HU) - hu_min + 1
  int64_t voxel_count = 0;
  std::array<int64_t, 3> bbox_min_irc{};  // inclusive
  std::array<int64_t, 3> bbox_max_irc{};  // inclusive
  double diameter_mm = 0.0;               // of the sphere with the component's volume
  double p_nodule = 0.0;
  std::optional<double> p_malignant;  // empty without a malignancy model (or not evaluated)
};

// Everything findings.json says about the analysis besides the findings themselves.
struct FindingsDocument {
  std::string series_uid;
  std::string source;  // the scan's path as given
  std::array<int64_t, 3> size_irc{};
  Geometry geometry;
  PipelineOptions options;
  std::map<std::string, std::string> model_sha256;  // kind -> sha256

  // From a bundle (options, checksums) and a scan; the caller fills size_irc and geometry.
  static FindingsDocument from_bundle(const Bundle& bundle, std::string series_uid, std::string source);
};

// findings.json text (2-space indented JSON, keys in io/findings.py's order, trailing newline):
// lunakit_version, torch_version, series_uid, source, size_irc, geometry, options,
// model_sha256, findings.
std::string findings_json(const FindingsDocument& document, const std::vector<Finding>& findings);

// LUNA16 CSV text: header line, then one row per finding (coordinates in mm, p_nodule).
std::string findings_csv(const std::string& series_uid, const std::vector<Finding>& findings);

// Writes every (path, text) to a temporary file beside its path first, and only when all are
// written renames them into place, so a failed write leaves neither temporaries nor any of the
// files behind (a rename that fails midway can leave the earlier files renamed). Errors throw
// lunakit::Error naming the path.
// Missing folders above a path are created first (and stay when a write fails).
void write_files_atomically(const std::vector<std::pair<std::string, std::string>>& path_and_text);

// Checks, before any work, that write_files_atomically can write `path`: not a folder, below no
// file, in a folder it may write (the nearest existing one, tried with a probe file). Throws
// lunakit::Error "<option> <path>: <problem>".
void check_output_file(const std::string& option, const std::string& path);

}  // namespace lunakit
