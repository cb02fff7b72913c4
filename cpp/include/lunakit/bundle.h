#pragma once
// The model bundle (docs/design.md, "Bundle"): a folder with manifest.json and one TorchScript
// file per model, written by `lunakit export` (python/lunakit/bundle/). Bundle::load checks
// the manifest's format and version, every file's sha256 and that each model takes the input
// the pipeline gives it, so an Analyzer built from a loaded Bundle does not fail on a bad model.
//
// manifest.json:
//   {"format": "lunakit-bundle", "format_version": 1, "lunakit_version": "...",
//    "torch_version": "...", "options": {<PipelineOptions fields>},
//    "models": {"seg": {"file": "seg.pt", "sha256": "<hex>"}, "cls": {...}, "mal": {...}?}}
// A bundle written by `lunakit export --format aoti` adds "model_format": "aoti" and its files are
// AOTInductor packages (seg.pt2, ...), loaded with torch::inductor::AOTIModelPackageLoader; they run
// on the CPU only, with the torch version that compiled them.
#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

namespace lunakit {

// Every number of the pipeline, as python/lunakit/pipeline/analyze.py's AnalysisOptions holds them
// (same names, same defaults, same checks). A bundle carries them in its manifest.
struct PipelineOptions {
  double hu_min = -1000.0;
  double hu_max = 1000.0;
  int64_t context_slices = 3;  // segmentation input: slices i - 3 .. i + 3, edges repeated
  double seg_threshold = 0.5;
  int64_t erosion_iterations = 1;
  int64_t connectivity = 6;  // 6, 18 or 26
  double min_diameter_mm = 0.0;  // components of a smaller equal-volume diameter are dropped
  std::string center_mode = "mass";  // a candidate's center: its component's center of "mass" or of its "core"
  std::array<int64_t, 3> crop_size{32, 48, 48};  // (I, R, C)
  std::string crop_mode = "shift";               // "shift" or "pad"
  double nodule_threshold = 0.5;
  std::string malignancy_on = "all";  // "all" candidates or only "nodules" above nodule_threshold
  int64_t seg_batch_size = 8;
  int64_t cls_batch_size = 64;

  // Throws lunakit::Error "options: <field> ..." when a value is out of range.
  void validate() const;
  // The options as a JSON object, the fields in AnalysisOptions.to_dict()'s order: what
  // findings.json and the Python bindings carry.
  std::string to_json() const;
};

// The format this library reads.
inline constexpr const char* kBundleFormat = "lunakit-bundle";
inline constexpr int kBundleFormatVersion = 1;

// A loaded, checked bundle. Copies share the loaded models (cheap to copy).
class Bundle {
 public:
  // Reads dir/manifest.json and the models it names (onto the CPU). Throws lunakit::Error
  // "<path>: <problem>" for a missing folder, manifest or model file, malformed JSON, another
  // format, an unknown format version or model format, a checksum mismatch, options out of range,
  // a file that is not TorchScript (or not an AOTInductor package; or "this build cannot load
  // AOTInductor packages" where lunakit was built without the loader), or a model that fails on
  // (or answers in the wrong shape to) a probe input of the pipeline's shape:
  // seg [1, 2 * context_slices + 1, 64, 64] -> [1, >= 1, 64, 64];
  // cls / mal [1, 1, *crop_size] -> (logits, probabilities [1, >= 2]).
  static Bundle load(const std::string& dir);

  const std::string& dir() const;
  const PipelineOptions& options() const;
  bool has_malignancy_model() const;
  // Model kind ("seg", "cls", "mal") -> sha256 of its file, as the manifest lists them.
  const std::map<std::string, std::string>& model_sha256() const;
  // Versions of the lunakit and torch that exported the bundle.
  const std::string& exported_by_lunakit() const;
  const std::string& exported_with_torch() const;

  struct Impl;  // holds the models (src/bundle_impl.h)
  const Impl& impl() const { return *impl_; }

 private:
  explicit Bundle(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// SHA-256 as 64 lowercase hex digits, of a byte range or of a file's contents. A file that
// cannot be opened or read throws lunakit::Error.
std::string sha256_hex(const void* data, std::size_t size);
std::string sha256_file(const std::string& path);

}  // namespace lunakit
