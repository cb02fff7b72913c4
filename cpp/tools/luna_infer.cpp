// luna_infer: analyze CT scans without Python.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>

#include "lunakit/error.h"
#include "lunakit/metaimage.h"
#include "lunakit/version.h"

namespace {
int usage() {
  std::fprintf(stderr, "usage: luna_infer info SCAN.mhd\n       luna_infer --version\n");
  return 2;
}

// A JSON string literal.
std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (const char ch : text) {
    const unsigned char u = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (u < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", u);
      out += escaped;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

// A JSON number with full double precision (null where JSON has no number: NaN, infinities).
std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  char text[40];
  std::snprintf(text, sizeof text, "%.17g", value);
  return text;
}

std::string json_vec3(const lunakit::Vec3& v) {
  return "[" + json_number(v[0]) + ", " + json_number(v[1]) + ", " + json_number(v[2]) + "]";
}

// `info SCAN.mhd`: size, geometry and HU range of a scan, as one JSON object on stdout.
int info(const std::string& mhd_path) {
  const lunakit::Volume volume = lunakit::read_metaimage(mhd_path);
  const lunakit::Geometry& g = volume.geometry;
  const lunakit::Mat3& d = g.direction();
  const double hu_min = volume.voxels.min().item<double>();
  const double hu_max = volume.voxels.max().item<double>();
  const char* dtype = volume.voxels.scalar_type() == torch::kInt16 ? "int16" : "float32";
  std::string json = "{";
  json += "\"size_irc\": [" + std::to_string(volume.slices()) + ", " + std::to_string(volume.rows()) + ", " +
          std::to_string(volume.cols()) + "], ";
  json += "\"spacing_xyz\": " + json_vec3(g.spacing_xyz()) + ", ";
  json += "\"origin_xyz\": " + json_vec3(g.origin_xyz()) + ", ";
  json += "\"direction\": [" + json_vec3({d[0], d[1], d[2]}) + ", " + json_vec3({d[3], d[4], d[5]}) + ", " +
          json_vec3({d[6], d[7], d[8]}) + "], ";
  json += "\"series_uid\": " + json_string(std::filesystem::path(mhd_path).stem().string()) + ", ";
  json += "\"hu_min\": " + json_number(hu_min) + ", ";
  json += "\"hu_max\": " + json_number(hu_max) + ", ";
  json += "\"dtype\": " + json_string(dtype) + "}";
  std::printf("%s\n", json.c_str());
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  const std::string command = argv[1];
  try {
    if (command == "--version") {
      std::printf("luna_infer %s\n", lunakit::version());
      return 0;
    }
    if (command == "info") {
      if (argc != 3) return usage();
      return info(argv[2]);
    }
    return usage();
  } catch (const lunakit::Error& e) {
    std::fprintf(stderr, "luna_infer: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "luna_infer: internal error: %s\n", e.what());
    return 1;
  }
}
