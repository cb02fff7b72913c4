#pragma once
// Resampling a scan to a fixed voxel spacing before the pipeline (the resample_mm option;
// docs/pipeline.md, "Resampling"). The book works in voxels and the default stays so; a fixed
// spacing lets models trained on one scanner's voxels see another's at the same size.
#include <vector>

#include "lunakit/finding.h"
#include "lunakit/geometry.h"
#include "lunakit/volume.h"

namespace lunakit {

// The volume on a grid of spacing_irc (mm; slice, row, column) with the same origin and direction:
// per axis floor((n - 1) * s / s') + 1 samples, so that every one lies inside the scan. Voxel j is
// the trilinear interpolation of the HU at source index j * s' / s, rounded half to even to int16.
// Throws lunakit::Error for a spacing that is not finite and positive, voxels that are not int16,
// or a grid of more than 2^31 voxels.
Volume resample(const Volume& volume, const Vec3& spacing_irc);

// Findings of an analysis on `analyzed` (resample(source, ...)) in the source grid's indices:
// center_irc scaled, bounding boxes widened to the source voxels they touch. voxel_count stays a
// count of the analyzed grid's voxels; center_xyz and diameter_mm are the same in both grids.
void to_source_grid(std::vector<Finding>& findings, const Volume& source, const Volume& analyzed);

}  // namespace lunakit
