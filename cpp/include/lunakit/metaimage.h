#pragma once
// MetaImage (.mhd + .raw, or LOCAL data) reader with no ITK dependency.
#include <string>

#include "lunakit/volume.h"

namespace lunakit {

// Reads a 3D MetaImage. Voxels come back as [I, R, C]: kInt16 for MET_SHORT, MET_UCHAR and
// MET_USHORT whose values fit, else kFloat32 (MET_FLOAT, large MET_USHORT). Throws
// lunakit::Error naming the file and the problem on any malformed input.
Volume read_metaimage(const std::string& mhd_path);

}  // namespace lunakit
