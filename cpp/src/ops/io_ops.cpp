// torch.ops.lunakit.read_metaimage: the C++ MetaImage reader, reachable from Python so tests
// can compare its voxels and geometry with SimpleITK's.
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "lunakit/error.h"
#include "lunakit/metaimage.h"

namespace {

std::tuple<at::Tensor, std::vector<double>, std::vector<double>, std::vector<double>> read_metaimage_op(
    std::string path) {
  try {
    const lunakit::Volume volume = lunakit::read_metaimage(path);
    const lunakit::Geometry& g = volume.geometry;
    return {volume.voxels, std::vector<double>(g.origin_xyz().begin(), g.origin_xyz().end()),
            std::vector<double>(g.spacing_xyz().begin(), g.spacing_xyz().end()),
            std::vector<double>(g.direction().begin(), g.direction().end())};  // row-major 3x3
  } catch (const lunakit::Error& e) {
    TORCH_CHECK(false, e.what());
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lunakit, m) {
  m.def("read_metaimage(str path) -> (Tensor voxels, float[] origin_xyz, float[] spacing_xyz, float[] direction)");
}

TORCH_LIBRARY_IMPL(lunakit, CompositeExplicitAutograd, m) { m.impl("read_metaimage", &read_metaimage_op); }
