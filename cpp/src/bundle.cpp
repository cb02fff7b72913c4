// Bundle::load: manifest.json -> checked options, checksums and models (TorchScript modules or,
// for "model_format": "aoti", AOTInductor packages). Mirrors python/lunakit/bundle/
// read_manifest / load_bundle (same checks, same messages), plus a probe of each model with an
// input of the pipeline's shape.
#include <c10/util/Exception.h>
#include <torch/script.h>

// AOTInductor's package loader ships with torch >= 2.6 (in libtorch_cpu); builds against a torch
// without the header (or with -DLUNAKIT_NO_AOTI) still compile and refuse AOTInductor bundles
// with a clear message.
#if !defined(LUNAKIT_NO_AOTI) && __has_include(<torch/csrc/inductor/aoti_package/model_package_loader.h>)
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#define LUNAKIT_HAS_AOTI 1
#else
#define LUNAKIT_HAS_AOTI 0
#endif

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "bundle_impl.h"
#include "lunakit/error.h"

namespace lunakit {

namespace fs = std::filesystem;
using nlohmann::json;

std::string first_line(const std::exception& e) {
  const auto* torch_error = dynamic_cast<const c10::Error*>(&e);
  std::string text = torch_error != nullptr ? torch_error->what_without_backtrace() : e.what();
  const size_t start = text.find_first_not_of(" \t\r\n");
  if (start == std::string::npos) return "unknown error";
  text = text.substr(start);
  const size_t end = text.find('\n');
  if (end != std::string::npos) text = text.substr(0, end);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\r')) text.pop_back();
  return text;
}

void PipelineOptions::validate() const {
  auto fail = [](const std::string& what) { throw Error("options: " + what); };
  auto number = [](double v) {
    std::ostringstream out;
    out << v;
    return out.str();
  };
  if (!(hu_min < hu_max)) fail("hu_min " + number(hu_min) + " must be below hu_max " + number(hu_max));
  if (context_slices < 0) fail("context_slices must be >= 0, got " + std::to_string(context_slices));
  if (!(seg_threshold >= 0.0 && seg_threshold <= 1.0)) fail("seg_threshold must lie in [0, 1], got " + number(seg_threshold));
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
  if (center_mode != "mass" && center_mode != "core") {
    fail("center_mode must be 'mass' or 'core', got '" + center_mode + "'");
  }
  if (malignancy_on != "all" && malignancy_on != "nodules") {
    fail("malignancy_on must be 'all' or 'nodules', got '" + malignancy_on + "'");
  }
  if (seg_batch_size < 1 || cls_batch_size < 1) fail("batch sizes must be >= 1");
}

namespace {

class TorchScriptModel final : public Model {
 public:
  explicit TorchScriptModel(torch::jit::Module module) : module_(std::move(module)) { module_.eval(); }
  c10::IValue forward(const torch::Tensor& input) override { return module_.forward({input}); }
  std::shared_ptr<Model> to_device(const torch::Device& device) const override {
    torch::jit::Module copy = module_.clone();  // the bundle's module stays on the CPU
    copy.to(device);
    return std::make_shared<TorchScriptModel>(std::move(copy));
  }
  std::shared_ptr<Model> optimized_for_cpu() const override {
    torch::jit::Module frozen = torch::jit::freeze(module_);  // a copy; module_ stays as loaded
    return std::make_shared<TorchScriptModel>(torch::jit::optimize_for_inference(frozen));
  }

 private:
  torch::jit::Module module_;
};

#if LUNAKIT_HAS_AOTI
// An AOTInductor package: compiled CPU code and its weights. Its runner returns a flat list of
// outputs; one becomes a tensor, several a tuple, as the exported model's forward returned them.
// The compiled code does not check its input's shape, so each call is checked against the shape
// the exporter put in the package's metadata (python/lunakit/bundle/aoti.py INPUT_SHAPE_KEY).
class AotiModel final : public Model {
 public:
  explicit AotiModel(const std::string& path)
      : path_(path), loader_(std::make_shared<torch::inductor::AOTIModelPackageLoader>(path)) {
    const auto metadata = loader_->get_metadata();
    const auto found = metadata.find(kInputShapeKey);
    const std::string text = found == metadata.end() ? std::string() : found->second;
    std::stringstream in(text);
    std::string item;
    while (std::getline(in, item, ',')) {
      try {
        size_t used = 0;
        input_shape_.push_back(std::stoll(item, &used));
        if (used != item.size()) input_shape_.clear();
      } catch (const std::exception&) {
        input_shape_.clear();
      }
      if (input_shape_.empty()) break;
    }
    if (input_shape_.empty()) {
      throw Error(path + ": the package records no valid " + std::string(kInputShapeKey) + " ('" + text + "')");
    }
  }
  c10::IValue forward(const torch::Tensor& input) override {
    bool fits = input.dim() == static_cast<int64_t>(input_shape_.size());
    for (size_t k = 0; fits && k < input_shape_.size(); ++k) {
      fits = input_shape_[k] < 0 || input_shape_[k] == input.size(static_cast<int64_t>(k));
    }
    if (!fits) {
      std::string expected = "[";
      for (size_t k = 0; k < input_shape_.size(); ++k) {
        expected += (k ? ", " : "") + (input_shape_[k] < 0 ? std::string("*") : std::to_string(input_shape_[k]));
      }
      throw Error(fs::path(path_).filename().string() + ": input of shape " + c10::str(input.sizes()) +
                  " does not match the package's " + expected + "]");
    }
    std::vector<at::Tensor> outputs = loader_->run({input.contiguous()});
    if (outputs.size() == 1) return outputs[0];
    std::vector<c10::IValue> elements(outputs.begin(), outputs.end());
    return c10::ivalue::Tuple::create(std::move(elements));
  }
  std::shared_ptr<Model> to_device(const torch::Device& device) const override {
    throw Error(path_ + ": an AOTInductor package holds cpu code; it cannot run on " + device.str() +
                " (use a TorchScript bundle there)");
  }

 private:
  static constexpr const char* kInputShapeKey = "lunakit.input_shape";  // "-1,7,-1,-1": -1 = dynamic
  std::string path_;
  std::shared_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
  std::vector<int64_t> input_shape_;
};
#endif

constexpr const char* kManifest = "manifest.json";

double read_double(const json& value, const std::string& name) {
  if (!value.is_number()) throw Error("options: " + name + " must be a number");
  return value.get<double>();
}

int64_t read_int(const json& value, const std::string& name) {
  if (value.is_number_integer()) return value.get<int64_t>();
  if (value.is_number_float()) {
    const double v = value.get<double>();
    if (v == static_cast<double>(static_cast<int64_t>(v))) return static_cast<int64_t>(v);
  }
  throw Error("options: " + name + " must be an integer");
}

std::string read_string(const json& value, const std::string& name) {
  if (!value.is_string()) throw Error("options: " + name + " must be a string");
  return value.get<std::string>();
}

// AnalysisOptions.from_dict: known fields only, defaults for the ones left out.
PipelineOptions parse_options(const json& d) {
  if (!d.is_object()) throw Error("options: must be a JSON object");
  PipelineOptions o;
  std::string unknown;
  for (const auto& [key, value] : d.items()) {
    if (key == "hu_min") o.hu_min = read_double(value, key);
    else if (key == "hu_max") o.hu_max = read_double(value, key);
    else if (key == "context_slices") o.context_slices = read_int(value, key);
    else if (key == "seg_threshold") o.seg_threshold = read_double(value, key);
    else if (key == "erosion_iterations") o.erosion_iterations = read_int(value, key);
    else if (key == "connectivity") o.connectivity = read_int(value, key);
    else if (key == "min_diameter_mm") o.min_diameter_mm = read_double(value, key);
    else if (key == "center_mode") o.center_mode = read_string(value, key);
    else if (key == "crop_size") {
      if (!value.is_array() || value.size() != 3) throw Error("options: crop_size must be 3 positive sizes");
      for (int k = 0; k < 3; ++k) o.crop_size[k] = read_int(value[k], "crop_size");
    } else if (key == "crop_mode") o.crop_mode = read_string(value, key);
    else if (key == "nodule_threshold") o.nodule_threshold = read_double(value, key);
    else if (key == "malignancy_on") o.malignancy_on = read_string(value, key);
    else if (key == "seg_batch_size") o.seg_batch_size = read_int(value, key);
    else if (key == "cls_batch_size") o.cls_batch_size = read_int(value, key);
    else unknown += (unknown.empty() ? "" : ", ") + key;
  }
  if (!unknown.empty()) throw Error("options: unknown field(s) " + unknown);
  o.validate();
  return o;
}

std::string shape_text(c10::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t k = 0; k < sizes.size(); ++k) out += (k ? ", " : "") + std::to_string(sizes[k]);
  return out + "]";
}

// Runs the segmentation model on zeros of the pipeline's input shape and checks its answer.
void probe_seg(Model& model, const PipelineOptions& options, const std::string& path) {
  const std::vector<int64_t> input_shape{1, 2 * options.context_slices + 1, 64, 64};
  const std::string what = path + ": seg model does not fit the pipeline's input " + shape_text(input_shape);
  c10::IValue out;
  try {
    out = model.forward(torch::zeros(input_shape));
  } catch (const std::exception& e) {
    throw Error(what + " (" + first_line(e) + ")");
  }
  if (!out.isTensor()) throw Error(what + " (it returns a " + out.tagKind() + ", not a tensor)");
  const torch::Tensor prob = out.toTensor();
  if (prob.dim() != 4 || prob.size(0) != 1 || prob.size(1) < 1 || prob.size(2) != 64 || prob.size(3) != 64 ||
      !prob.is_floating_point()) {
    throw Error(what + " (it returns " + shape_text(prob.sizes()) + ", expected [1, >= 1, 64, 64] probabilities)");
  }
}

// Runs a classifier on zeros of the crop shape; it must return (logits, probabilities [1, >= 2]).
void probe_classifier(Model& model, const PipelineOptions& options, const std::string& kind,
                      const std::string& path) {
  const std::vector<int64_t> input_shape{1, 1, options.crop_size[0], options.crop_size[1], options.crop_size[2]};
  const std::string what = path + ": " + kind + " model does not fit the pipeline's input " + shape_text(input_shape);
  c10::IValue out;
  try {
    out = model.forward(torch::zeros(input_shape));
  } catch (const std::exception& e) {
    throw Error(what + " (" + first_line(e) + ")");
  }
  if (!out.isTuple() || out.toTupleRef().elements().size() != 2 || !out.toTupleRef().elements()[1].isTensor()) {
    throw Error(what + " (it must return a tuple (logits, probabilities))");
  }
  const torch::Tensor prob = out.toTupleRef().elements()[1].toTensor();
  if (prob.dim() != 2 || prob.size(0) != 1 || prob.size(1) < 2 || !prob.is_floating_point()) {
    throw Error(what + " (its probabilities are " + shape_text(prob.sizes()) + ", expected [1, >= 2])");
  }
}

}  // namespace

std::shared_ptr<Model> load_torchscript_model(const std::string& path) {
  try {
    return std::make_shared<TorchScriptModel>(torch::jit::load(path, torch::kCPU));
  } catch (const std::exception& e) {
    throw Error(path + ": not a loadable TorchScript model (" + first_line(e) + ")");
  }
}

bool can_load_aoti() { return LUNAKIT_HAS_AOTI != 0; }

std::shared_ptr<Model> load_aoti_model(const std::string& path) {
#if LUNAKIT_HAS_AOTI
  try {
    return std::make_shared<AotiModel>(path);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(path + ": not a loadable AOTInductor package (" + first_line(e) + ")");
  }
#else
  throw Error(path + ": this build cannot load AOTInductor packages (its torch has no AOTIModelPackageLoader)");
#endif
}

Bundle Bundle::load(const std::string& dir) {
  auto impl = std::make_shared<Impl>();
  impl->dir = dir;
  const fs::path bundle(dir);
  const fs::path manifest_path = bundle / kManifest;
  const std::string manifest_name = manifest_path.string();
  std::error_code ec;
  if (!fs::is_directory(bundle, ec)) throw Error(dir + ": bundle folder does not exist");
  if (!fs::is_regular_file(manifest_path, ec)) throw Error(dir + ": no " + kManifest + " in the bundle");

  json manifest;
  {
    std::ifstream in(manifest_path, std::ios::binary);
    if (!in) throw Error(manifest_name + ": cannot open");
    try {
      manifest = json::parse(in);
    } catch (const json::exception& e) {
      throw Error(manifest_name + ": not valid JSON (" + first_line(e) + ")");
    }
  }
  if (!manifest.is_object() || !manifest.contains("format") || manifest["format"] != kBundleFormat) {
    throw Error(manifest_name + ": not a lunakit bundle manifest");
  }
  const json version = manifest.contains("format_version") ? manifest["format_version"] : json();
  if (!version.is_number() || version.get<double>() != kBundleFormatVersion) {
    throw Error(manifest_name + ": bundle format version " + (version.is_null() ? "None" : version.dump()) +
                " is not supported (this lunakit reads " + std::to_string(kBundleFormatVersion) + ")");
  }
  const json model_format = manifest.contains("model_format") ? manifest["model_format"] : json("torchscript");
  if (model_format != "torchscript" && model_format != "aoti") {
    const std::string shown = model_format.is_string() ? "'" + model_format.get<std::string>() + "'" : model_format.dump();
    throw Error(manifest_name + ": model format " + shown + " is not supported (this lunakit reads torchscript, aoti)");
  }
  impl->model_format = model_format.get<std::string>();
  const json models = manifest.contains("models") ? manifest["models"] : json();
  if (!models.is_object() || !models.contains("seg") || !models.contains("cls")) {
    throw Error(manifest_name + ": manifest must name a seg and a cls model");
  }
  for (const auto& [kind, entry] : models.items()) {
    const bool known = kind == "seg" || kind == "cls" || kind == "mal";
    if (!known || !entry.is_object() || !entry.contains("file") || !entry.contains("sha256") ||
        !entry["file"].is_string() || !entry["sha256"].is_string()) {
      throw Error(manifest_name + ": malformed model entry '" + kind + "'");
    }
    const std::string file = entry["file"].get<std::string>();
    const fs::path model_path = bundle / file;
    if (!fs::is_regular_file(model_path, ec)) throw Error(dir + ": model file " + file + " is missing");
    if (sha256_file(model_path.string()) != entry["sha256"].get<std::string>()) {
      throw Error(dir + ": checksum mismatch for " + file);
    }
    impl->model_file[kind] = file;
    impl->model_sha256[kind] = entry["sha256"].get<std::string>();
  }
  try {
    impl->options = parse_options(manifest.contains("options") ? manifest["options"] : json::object());
  } catch (const Error& e) {
    throw Error(manifest_name + ": " + e.what());
  }
  auto text_field = [&](const char* key) {
    return manifest.contains(key) && manifest[key].is_string() ? manifest[key].get<std::string>() : std::string();
  };
  impl->lunakit_version = text_field("lunakit_version");
  impl->torch_version = text_field("torch_version");

  const bool aoti = impl->model_format == "aoti";
  if (aoti && !can_load_aoti()) throw Error(dir + ": this build cannot load AOTInductor packages");
  for (const auto& [kind, file] : impl->model_file) {
    const std::string path = (bundle / file).string();
    std::shared_ptr<Model> model = aoti ? load_aoti_model(path) : load_torchscript_model(path);
    c10::InferenceMode inference;  // only around the probe: the parameters stay normal tensors
    if (kind == "seg") {
      probe_seg(*model, impl->options, path);
      impl->seg = model;
    } else {
      probe_classifier(*model, impl->options, kind, path);
      if (kind == "cls") impl->cls = model;
      else impl->mal = model;
    }
  }
  return Bundle(std::move(impl));
}

const std::string& Bundle::dir() const { return impl_->dir; }
const PipelineOptions& Bundle::options() const { return impl_->options; }
bool Bundle::has_malignancy_model() const { return impl_->mal != nullptr; }
const std::map<std::string, std::string>& Bundle::model_sha256() const { return impl_->model_sha256; }
const std::string& Bundle::exported_by_lunakit() const { return impl_->lunakit_version; }
const std::string& Bundle::exported_with_torch() const { return impl_->torch_version; }

}  // namespace lunakit
