// The bundle manifest and the pipeline options: parsed and checked here, once, for every reader
// (Bundle::load in C++, lunakit.bundle and lunakit.pipeline.options in Python through
// lunakit._core). No torch in this file: it is plain JSON and checks.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "lunakit/bundle.h"
#include "lunakit/error.h"
#include "manifest_json.h"

namespace lunakit {

namespace fs = std::filesystem;
using nlohmann::json;
using ordered_json = nlohmann::ordered_json;

void PipelineOptions::validate() const {
  auto fail = [](const std::string& what) { throw Error("options: " + what); };
  auto number = [](double v) {
    std::ostringstream out;
    out << v;
    return out.str();
  };
  if (resample_mm) {
    for (double s : *resample_mm) {
      if (!(std::isfinite(s) && s >= 0.1 && s <= 10.0)) {
        fail("resample_mm must be null or 3 spacings in mm between 0.1 and 10, got " + number(s));
      }
    }
  }
  if (!(std::isfinite(hu_min) && std::isfinite(hu_max))) {
    fail("hu_min and hu_max must be finite, got " + number(hu_min) + " and " + number(hu_max));
  }
  if (!(hu_min < hu_max)) fail("hu_min " + number(hu_min) + " must be below hu_max " + number(hu_max));
  if (context_slices < 0) fail("context_slices must be >= 0, got " + std::to_string(context_slices));
  if (!(seg_threshold >= 0.0 && seg_threshold <= 1.0))
    fail("seg_threshold must lie in [0, 1], got " + number(seg_threshold));
  if (!(nodule_threshold >= 0.0 && nodule_threshold <= 1.0)) {
    fail("nodule_threshold must lie in [0, 1], got " + number(nodule_threshold));
  }
  if (!(min_diameter_mm >= 0.0 && std::isfinite(min_diameter_mm))) {
    fail("min_diameter_mm must be a finite number >= 0, got " + number(min_diameter_mm));
  }
  if (erosion_iterations < 0) fail("erosion_iterations must be >= 0, got " + std::to_string(erosion_iterations));
  if (connectivity != 6 && connectivity != 18 && connectivity != 26) {
    fail("connectivity must be 6, 18 or 26, got " + std::to_string(connectivity));
  }
  for (int64_t s : crop_size) {
    if (s < 1) fail("crop_size must be 3 positive sizes");
  }
  if (crop_mode != "shift" && crop_mode != "pad") fail("crop_mode must be 'shift' or 'pad', got '" + crop_mode + "'");
  if (center_mode != "mass" && center_mode != "core" && center_mode != "core3d") {
    fail("center_mode must be 'mass', 'core' or 'core3d', got '" + center_mode + "'");
  }
  if (lung_margin_mm && !(std::isfinite(*lung_margin_mm) && *lung_margin_mm >= 0.0 && *lung_margin_mm <= 100.0)) {
    fail("lung_margin_mm must be null or a number of mm in [0, 100], got " + number(*lung_margin_mm));
  }
  if (malignancy_on != "all" && malignancy_on != "nodules") {
    fail("malignancy_on must be 'all' or 'nodules', got '" + malignancy_on + "'");
  }
  if (seg_batch_size < 1 || cls_batch_size < 1) fail("batch sizes must be >= 1");
  if (precision != "fp32" && precision != "bf16" && precision != "auto") {
    fail("precision must be 'fp32', 'bf16' or 'auto', got '" + precision + "'");
  }
}

std::string PipelineOptions::to_json() const {  // the fields in declaration order
  const PipelineOptions& o = *this;
  ordered_json d;
  d["resample_mm"] = o.resample_mm
                         ? ordered_json::array({(*o.resample_mm)[0], (*o.resample_mm)[1], (*o.resample_mm)[2]})
                         : ordered_json(nullptr);
  d["hu_min"] = o.hu_min;
  d["hu_max"] = o.hu_max;
  d["context_slices"] = o.context_slices;
  d["seg_threshold"] = o.seg_threshold;
  d["erosion_iterations"] = o.erosion_iterations;
  d["connectivity"] = o.connectivity;
  d["min_diameter_mm"] = o.min_diameter_mm;
  d["center_mode"] = o.center_mode;
  d["lung_margin_mm"] = o.lung_margin_mm ? ordered_json(*o.lung_margin_mm) : ordered_json(nullptr);
  d["crop_size"] = ordered_json::array({o.crop_size[0], o.crop_size[1], o.crop_size[2]});
  d["crop_mode"] = o.crop_mode;
  d["nodule_threshold"] = o.nodule_threshold;
  d["malignancy_on"] = o.malignancy_on;
  d["cls_flips"] = o.cls_flips;
  d["seg_batch_size"] = o.seg_batch_size;
  d["cls_batch_size"] = o.cls_batch_size;
  d["precision"] = o.precision;
  return d.dump();
}

namespace {

double read_double(const json& value, const std::string& name) {
  if (!value.is_number()) throw Error("options: " + name + " must be a number");
  return value.get<double>();
}

int64_t read_int(const json& value, const std::string& name) {
  if (value.is_number_integer()) return value.get<int64_t>();
  if (value.is_number_float()) {
    const double v = value.get<double>();
    if (std::isfinite(v) && std::fabs(v) < 9.0e15 && v == std::trunc(v)) return static_cast<int64_t>(v);
  }
  throw Error("options: " + name + " must be an integer");
}

bool read_bool(const json& value, const std::string& name) {
  if (!value.is_boolean()) throw Error("options: " + name + " must be true or false");
  return value.get<bool>();
}

std::string read_string(const json& value, const std::string& name) {
  if (!value.is_string()) throw Error("options: " + name + " must be a string");
  return value.get<std::string>();
}

// What a manifest shows of a value in a message: strings quoted, anything else as JSON.
std::string shown(const json& value) {
  if (value.is_null()) return "None";
  if (value.is_string()) return "'" + value.get<std::string>() + "'";
  return value.dump();
}

// A model entry's file must be a plain name inside the bundle folder.
bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos && name.find('\0') == std::string::npos;
}

bool contains(const std::vector<std::string>& list, const std::string& item) {
  for (const std::string& entry : list) {
    if (entry == item) return true;
  }
  return false;
}

std::string joined(const std::vector<std::string>& list) {
  std::string out;
  for (const std::string& entry : list) out += (out.empty() ? "" : ", ") + entry;
  return out;
}

json parse_manifest_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot open");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    throw Error(path.string() + ": not valid JSON (" + what + ")");
  }
}

}  // namespace

PipelineOptions options_from_json(const json& d) {
  if (!d.is_object()) throw Error("options: must be a JSON object");
  PipelineOptions o;
  std::string unknown;
  for (const auto& [key, value] : d.items()) {
    if (key == "resample_mm") {
      if (value.is_null()) {
        o.resample_mm.reset();
      } else {
        if (!value.is_array() || value.size() != 3)
          throw Error("options: resample_mm must be null or 3 spacings in mm");
        o.resample_mm = std::array<double, 3>{};
        for (int k = 0; k < 3; ++k) (*o.resample_mm)[k] = read_double(value[k], "resample_mm");
      }
    } else if (key == "hu_min")
      o.hu_min = read_double(value, key);
    else if (key == "hu_max")
      o.hu_max = read_double(value, key);
    else if (key == "context_slices")
      o.context_slices = read_int(value, key);
    else if (key == "seg_threshold")
      o.seg_threshold = read_double(value, key);
    else if (key == "erosion_iterations")
      o.erosion_iterations = read_int(value, key);
    else if (key == "connectivity")
      o.connectivity = read_int(value, key);
    else if (key == "min_diameter_mm")
      o.min_diameter_mm = read_double(value, key);
    else if (key == "center_mode")
      o.center_mode = read_string(value, key);
    else if (key == "lung_margin_mm") {
      if (value.is_null())
        o.lung_margin_mm.reset();
      else
        o.lung_margin_mm = read_double(value, key);
    } else if (key == "crop_size") {
      if (!value.is_array() || value.size() != 3) throw Error("options: crop_size must be 3 positive sizes");
      for (int k = 0; k < 3; ++k) o.crop_size[k] = read_int(value[k], "crop_size");
    } else if (key == "crop_mode")
      o.crop_mode = read_string(value, key);
    else if (key == "nodule_threshold")
      o.nodule_threshold = read_double(value, key);
    else if (key == "malignancy_on")
      o.malignancy_on = read_string(value, key);
    else if (key == "cls_flips")
      o.cls_flips = read_bool(value, key);
    else if (key == "seg_batch_size")
      o.seg_batch_size = read_int(value, key);
    else if (key == "cls_batch_size")
      o.cls_batch_size = read_int(value, key);
    else if (key == "precision")
      o.precision = read_string(value, key);
    else
      unknown += (unknown.empty() ? "" : ", ") + key;
  }
  if (!unknown.empty()) throw Error("options: unknown field(s) " + unknown);
  o.validate();
  return o;
}

PipelineOptions PipelineOptions::from_json(const std::string& text) {
  json d;
  try {
    d = json::parse(text);
  } catch (const json::exception& e) {
    std::string what = e.what();
    throw Error("options: not valid JSON (" + what.substr(0, what.find('\n')) + ")");
  }
  return options_from_json(d);
}

Manifest read_manifest(const std::string& dir, const ManifestFormat& format) {
  const fs::path bundle(dir);
  const fs::path path = bundle / kManifestFile;
  const std::string name = path.string();
  std::error_code ec;
  if (!fs::is_directory(bundle, ec)) throw Error(dir + ": bundle folder does not exist");
  if (!fs::is_regular_file(path, ec)) throw Error(dir + ": no " + kManifestFile + " in the bundle");
  const json manifest = parse_manifest_file(path);
  auto field = [&](const char* key) { return manifest.contains(key) ? manifest[key] : json(); };

  if (!manifest.is_object() || field("format") != format.name) {
    const json found = manifest.is_object() ? field("format") : json();
    throw Error(name + ": not a lunakit " + format.label + " manifest" +
                (found.is_string() ? " (its format is " + shown(found) + ")" : ""));
  }
  const json version = field("format_version");
  if (!version.is_number() || version.get<double>() != format.version) {
    throw Error(name + ": " + format.label + " format version " + shown(version) +
                " is not supported (this lunakit reads " + std::to_string(format.version) + ")");
  }
  Manifest out;
  out.dir = dir;
  if (!format.model_formats.empty()) {
    const json model_format = manifest.contains("model_format") ? field("model_format") : json(format.model_formats[0]);
    if (!model_format.is_string() || !contains(format.model_formats, model_format.get<std::string>())) {
      throw Error(name + ": model format " + shown(model_format) + " is not supported (this lunakit reads " +
                  joined(format.model_formats) + ")");
    }
    out.model_format = model_format.get<std::string>();
  }
  const json models = field("models");
  if (!models.is_object() || !models.contains("seg") || !models.contains("cls")) {
    throw Error(name + ": manifest must name a seg and a cls model");
  }
  for (const auto& [kind, entry] : models.items()) {
    if (!contains(format.kinds, kind) || !entry.is_object() || !entry.contains("file") || !entry.contains("sha256") ||
        !entry["file"].is_string() || !entry["sha256"].is_string()) {
      throw Error(name + ": malformed model entry '" + kind + "'");
    }
    const std::string file = entry["file"].get<std::string>();
    if (!is_plain_file_name(file)) {
      throw Error(name + ": model entry '" + kind + "' names " + shown(entry["file"]) +
                  ", not a file inside the bundle folder");
    }
    const fs::path model_path = bundle / file;
    if (!fs::is_regular_file(model_path, ec)) throw Error(dir + ": model file " + file + " is missing");
    if (sha256_file(model_path.string()) != entry["sha256"].get<std::string>()) {
      throw Error(dir + ": checksum mismatch for " + file);
    }
    out.model_file[kind] = file;
    out.model_sha256[kind] = entry["sha256"].get<std::string>();
  }
  try {
    out.options = options_from_json(manifest.contains("options") ? field("options") : json::object());
  } catch (const Error& e) {
    throw Error(name + ": " + e.what());
  }
  auto text_field = [&](const char* key) {
    return field(key).is_string() ? field(key).get<std::string>() : std::string();
  };
  out.lunakit_version = text_field("lunakit_version");
  out.torch_version = text_field("torch_version");
  out.json = manifest.dump();
  return out;
}

}  // namespace lunakit
