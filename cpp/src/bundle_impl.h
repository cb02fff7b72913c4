#pragma once
// What a loaded Bundle holds beside its manifest: the models (on the CPU), each behind the small
// Model interface so that the Analyzer runs TorchScript modules and AOTInductor packages alike.
// Private to lunakit_core (bundle.cpp fills it, analyzer.cpp runs it).
#include <torch/script.h>

#include <map>
#include <memory>
#include <string>

#include "lunakit/bundle.h"

namespace lunakit {

// One network of the pipeline: a float tensor in; a tensor (seg) or a tuple (logits,
// probabilities) (cls, mal) out, as the TorchScript module's forward returns them.
class Model {
 public:
  virtual ~Model() = default;
  virtual c10::IValue forward(const torch::Tensor& input) = 0;
  // A copy whose parameters live on `device` (not the CPU). Throws lunakit::Error or c10::Error
  // when the model cannot run there.
  virtual std::shared_ptr<Model> to_device(const torch::Device& device) const = 0;
  // A copy frozen and optimized for CPU inference (TorchScript freeze + optimize_for_inference:
  // oneDNN convolutions with prepacked weights and fused ReLU), or null where there is nothing to
  // do (an AOTInductor package is compiled already).
  virtual std::shared_ptr<Model> optimized_for_cpu() const { return nullptr; }
};

// A TorchScript module (torch::jit::load), in eval mode.
std::shared_ptr<Model> load_torchscript_model(const std::string& path);
// An AOTInductor package (<kind>.pt2, torch::inductor::AOTIModelPackageLoader). Throws
// lunakit::Error "this build cannot load AOTInductor packages" where the header was absent.
std::shared_ptr<Model> load_aoti_model(const std::string& path);
// Whether this build can load AOTInductor packages.
bool can_load_aoti();

// The checked manifest and the models it names.
struct Bundle::Impl : Manifest {
  std::shared_ptr<Model> seg;
  std::shared_ptr<Model> cls;
  std::shared_ptr<Model> mal;  // null without a malignancy model
};

}  // namespace lunakit
