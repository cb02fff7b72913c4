// A PACS plug-in in miniature: the host already holds a CT series as one int16 HU buffer
// (slice after slice, row after row) and its geometry; lunakit analyzes it in place, without
// copying the pixels, and hands back findings.
//
//   cpp_embed BUNDLE                                   analyze a built-in phantom
//   cpp_embed BUNDLE VOXELS.raw SLICES ROWS COLS SX SY SZ [OX OY OZ]
//                                                      analyze raw little-endian int16 voxels
//
// Prints one line per finding: p_nodule, center_xyz (mm), center_irc, voxel count.
#include <lunakit/analyzer.h>
#include <lunakit/bundle.h>
#include <lunakit/error.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace {

// The host's pixel buffer: here either read from a file or drawn (air with two dense balls).
std::vector<int16_t> host_pixels(int argc, char** argv, int64_t& slices, int64_t& rows, int64_t& cols) {
  if (argc >= 9) {
    slices = std::atoll(argv[3]);
    rows = std::atoll(argv[4]);
    cols = std::atoll(argv[5]);
    std::vector<int16_t> pixels(static_cast<size_t>(slices * rows * cols));
    std::ifstream in(argv[2], std::ios::binary);
    in.read(reinterpret_cast<char*>(pixels.data()), static_cast<std::streamsize>(pixels.size() * sizeof(int16_t)));
    if (!in)
      throw lunakit::Error(std::string(argv[2]) + ": fewer voxels than " + argv[3] + " x " + argv[4] + " x " + argv[5]);
    return pixels;
  }
  slices = 40;
  rows = 96;
  cols = 96;
  std::vector<int16_t> pixels(static_cast<size_t>(slices * rows * cols), int16_t{-900});
  const double balls[2][4] = {{14, 30, 60, 5.0}, {26, 64, 28, 3.5}};  // i, r, c, radius (voxels)
  for (int64_t i = 0; i < slices; ++i)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        for (const auto& b : balls) {
          const double d2 = (i - b[0]) * (i - b[0]) + (r - b[1]) * (r - b[1]) + (c - b[2]) * (c - b[2]);
          if (d2 <= b[3] * b[3]) pixels[static_cast<size_t>((i * rows + r) * cols + c)] = 60;
        }
  return pixels;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: cpp_embed BUNDLE [VOXELS.raw SLICES ROWS COLS SX SY SZ [OX OY OZ]]\n");
    return 2;
  }
  try {
    int64_t slices = 0, rows = 0, cols = 0;
    const std::vector<int16_t> pixels = host_pixels(argc, argv, slices, rows, cols);
    lunakit::Vec3 spacing_xyz{0.7, 0.7, 2.5}, origin_xyz{0.0, 0.0, 0.0};
    if (argc >= 9) spacing_xyz = {std::atof(argv[6]), std::atof(argv[7]), std::atof(argv[8])};
    if (argc >= 12) origin_xyz = {std::atof(argv[9]), std::atof(argv[10]), std::atof(argv[11])};
    const lunakit::Geometry geometry(origin_xyz, spacing_xyz, {1, 0, 0, 0, 1, 0, 0, 0, 1});

    // Load once at plug-in start; analyze each series the host hands over.
    const lunakit::Bundle bundle = lunakit::Bundle::load(argv[1]);
    const lunakit::Analyzer analyzer(bundle, {.device = "cpu"});
    // No copy: the Volume reads `pixels`, which outlives it.
    const lunakit::Volume volume = lunakit::Volume::from_buffer(pixels.data(), slices, rows, cols, geometry);
    const std::vector<lunakit::Finding> findings = analyzer.analyze(volume);

    std::printf("%zu findings\n", findings.size());
    for (const lunakit::Finding& f : findings) {
      std::printf("p_nodule=%.6f center_xyz=(%.3f, %.3f, %.3f) center_irc=(%.4f, %.4f, %.4f) voxels=%lld\n", f.p_nodule,
                  f.center_xyz[0], f.center_xyz[1], f.center_xyz[2], f.center_irc[0], f.center_irc[1], f.center_irc[2],
                  static_cast<long long>(f.voxel_count));
    }
    return 0;
  } catch (const lunakit::Error& e) {
    std::fprintf(stderr, "cpp_embed: error: %s\n", e.what());
    return 2;
  }
}
