// Bundle::load: the checked manifest (manifest.cpp) -> models (TorchScript modules or, for
// "model_format": "aoti", AOTInductor packages), each probed with an input of the pipeline's shape.
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

#include <filesystem>
#include <sstream>

#include "bundle_impl.h"
#include "lunakit/error.h"
#include "lunakit/finding.h"

namespace lunakit {

namespace fs = std::filesystem;

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
void probe_classifier(Model& model, const PipelineOptions& options, const std::string& kind, const std::string& path) {
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

namespace {

// Each model of the manifest, loaded and probed with an input of the pipeline's shape.
void load_models(Bundle::Impl& impl) {
  const bool aoti = impl.model_format == "aoti";
  if (aoti && !can_load_aoti()) throw Error(impl.dir + ": this build cannot load AOTInductor packages");
  for (const auto& [kind, file] : impl.model_file) {
    const std::string path = (fs::path(impl.dir) / file).string();
    std::shared_ptr<Model> model = aoti ? load_aoti_model(path) : load_torchscript_model(path);
    c10::InferenceMode inference;  // only around the probe: the parameters stay normal tensors
    if (kind == "seg") {
      probe_seg(*model, impl.options, path);
      impl.seg = model;
    } else {
      probe_classifier(*model, impl.options, kind, path);
      (kind == "cls" ? impl.cls : impl.mal) = model;
    }
  }
}

}  // namespace

Bundle Bundle::load(const std::string& dir) {
  auto impl = std::make_shared<Impl>();
  static_cast<Manifest&>(*impl) = read_manifest(dir);
  load_models(*impl);
  return Bundle(std::move(impl));
}

// Here rather than in findings.cpp, so that the findings writers need no bundle (cpp/fuzz).
FindingsDocument FindingsDocument::from_bundle(const Bundle& bundle, std::string series_uid, std::string source) {
  FindingsDocument doc;
  doc.series_uid = std::move(series_uid);
  doc.source = std::move(source);
  doc.options = bundle.options();
  doc.model_sha256 = bundle.model_sha256();
  return doc;
}

const std::string& Bundle::dir() const { return impl_->dir; }
const PipelineOptions& Bundle::options() const { return impl_->options; }
bool Bundle::has_malignancy_model() const { return impl_->mal != nullptr; }
const std::map<std::string, std::string>& Bundle::model_sha256() const { return impl_->model_sha256; }
const std::string& Bundle::exported_by_lunakit() const { return impl_->lunakit_version; }
const std::string& Bundle::exported_with_torch() const { return impl_->torch_version; }

}  // namespace lunakit
