#pragma once
// MetaImage (.mhd + .raw, or .mha with LOCAL data) reader with no ITK dependency.
//
// Header: "Key = Value" lines up to and including ElementDataFile (keys case-sensitive, as
// MetaIO writes them; whitespace around keys and values is ignored; a key may appear once).
// Required: NDims (= 3), DimSize (3 positive integers, at most 2^34 voxels), ElementType
// (MET_SHORT, MET_USHORT, MET_UCHAR, MET_FLOAT), ElementDataFile (a file relative to the
// header's folder, or LOCAL: the data follows the ElementDataFile line).
// Optional, with MetaIO's synonyms in order of preference and their defaults:
//   Offset | Position | Origin          origin_xyz, default 0 0 0
//   ElementSpacing | ElementSize       spacing_xyz, default 1 1 1
//   TransformMatrix | Rotation | Orientation
//       9 numbers written column by column of the direction matrix (MetaIO stores the
//       transpose of ITK's row-major direction), default identity
//   ElementByteOrderMSB | BinaryDataByteOrderMSB   True: big-endian data
//   CompressedData (True: zlib/gzip stream), CompressedDataSize (bytes of it; else to end of file)
//   HeaderSize: bytes to skip at the start of the data file (for LOCAL: after the header);
//       -1: the data are the last bytes of the file
//   BinaryData (must be True), ElementNumberOfChannels (must be 1)
// Origin and spacing must be finite, spacing positive. The data must fill the data file (for
// LOCAL: the rest of the file) exactly: HeaderSize bytes, then DimSize x element bytes, or a
// compressed stream of exactly CompressedDataSize bytes (without it: to the file's end) that
// inflates to exactly that; more bytes than the header calls for mean a wrong header and are
// refused (except with HeaderSize -1). Other keys are ignored. Rule: docs/design.md, "Errors".
#include <string>

#include "lunakit/volume.h"

namespace lunakit {

// Reads a 3D MetaImage. Voxels come back as [I, R, C] (file order x fastest, then y, then z):
// kInt16 for MET_SHORT, MET_UCHAR and MET_USHORT whose values all fit (<= 32767), else
// kFloat32 (MET_FLOAT, MET_USHORT above 32767). The Geometry's direction equals SimpleITK's
// GetDirection() for the same file. Throws lunakit::Error "<mhd_path>: <problem>" (one line) on
// a missing, truncated or malformed header or data file, or corrupt compressed data.
Volume read_metaimage(const std::string& mhd_path);

// Writes `volume` (int16 or float32) as mhd_path (a .mhd header) and the .raw beside it, both
// written whole or not at all (write_files_atomically); read_metaimage and SimpleITK read it back
// with the same voxels and geometry. Throws lunakit::Error naming the path.
void write_metaimage(const std::string& mhd_path, const Volume& volume);

}  // namespace lunakit
