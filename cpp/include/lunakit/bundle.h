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
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace lunakit {

// Every number of the pipeline. A bundle carries them in its manifest. These defaults and checks are
// the only ones: python/lunakit/pipeline/options.py's AnalysisOptions reads both through
// lunakit._core (docs/design.md, "Bundle").
struct PipelineOptions {
  // Resample the scan to this spacing (mm; slice, row, column) before everything else; empty: the
  // book's way, in the scan's own voxels (lunakit/resample.h).
  std::optional<std::array<double, 3>> resample_mm;
  double hu_min = -1000.0;
  double hu_max = 1000.0;
  int64_t context_slices = 3;  // segmentation input: slices i - 3 .. i + 3, edges repeated
  double seg_threshold = 0.5;
  int64_t erosion_iterations = 1;
  int64_t connectivity = 6;      // 6, 18 or 26
  double min_diameter_mm = 0.0;  // components of a smaller equal-volume diameter are dropped
  // a candidate's center: its component's center of "mass", or of its "core" (greatest in-plane
  // depth) or "core3d" (greatest 3D depth in mm)
  std::string center_mode = "mass";
  // Drop candidates whose center lies farther than this (mm) from the lung field (ops lung_field:
  // bowel gas, the neck); empty: keep all, the book's way. A scan without a lung field keeps all.
  std::optional<double> lung_margin_mm;
  std::array<int64_t, 3> crop_size{32, 48, 48};  // (I, R, C)
  std::string crop_mode = "shift";               // "shift" or "pad"
  double nodule_threshold = 0.5;
  std::string malignancy_on = "all";  // "all" candidates or only "nodules" above nodule_threshold
  // Test-time augmentation: each classifier's probability is the mean over the crop's 8 mirror
  // images (every combination of flipping the slice, row and column axes; the classifiers train
  // with flip augmentation). 8 times the classification work. Off: the book's single pass.
  bool cls_flips = false;
  int64_t seg_batch_size = 8;
  int64_t cls_batch_size = 64;
  // How the networks run: "fp32" (exact, the default), "bf16" (fast: bf16 autocast with fp32
  // rechecks near the thresholds, docs/pipeline.md "Fast mode") or "auto" (bf16 where the device
  // computes it natively, else fp32). A how-to-run choice, not a number of the pipeline, but kept
  // here so that one check holds for both runtimes and findings.json records it.
  std::string precision = "fp32";

  // Throws lunakit::Error "options: <field> ..." when a value is out of range.
  void validate() const;
  // Options from a JSON object: known fields only, defaults for the ones left out, then
  // validate(). Throws lunakit::Error "options: ..." (unknown field, wrong type, out of range).
  static PipelineOptions from_json(const std::string& text);
  // The options as a JSON object, the fields in AnalysisOptions.to_dict()'s order: what
  // findings.json and the Python bindings carry.
  std::string to_json() const;
};

// The format this library reads.
inline constexpr const char* kBundleFormat = "lunakit-bundle";
inline constexpr int kBundleFormatVersion = 1;

inline constexpr const char* kManifestFile = "manifest.json";

// Which manifest a reader expects. The default is the TorchScript/AOTInductor bundle this library
// runs; the Python package also reads its ONNX bundles' manifests with another name and kinds.
struct ManifestFormat {
  std::string name = kBundleFormat;
  int version = kBundleFormatVersion;
  std::vector<std::string> kinds{"seg", "cls", "mal"};            // model kinds allowed (seg and cls required)
  std::vector<std::string> model_formats{"torchscript", "aoti"};  // "model_format" values; the first is
                                                                  // the default; empty: not checked
  std::string label = "bundle";  // how messages name the bundle ("not a lunakit <label> manifest")
};

// A bundle folder's manifest, checked: its format and version, a seg and a cls entry, every model
// file a plain name inside the folder, present, with its sha256; valid options.
struct Manifest {
  std::string dir;
  std::string model_format;                         // "torchscript" or "aoti" (empty if unchecked)
  std::map<std::string, std::string> model_file;    // kind -> file name in dir
  std::map<std::string, std::string> model_sha256;  // kind -> sha256 of that file
  PipelineOptions options;
  std::string lunakit_version;  // of the lunakit and the torch that exported the bundle
  std::string torch_version;
  std::string json;  // the whole manifest, as JSON text
};

// Reads and checks dir/manifest.json without loading any model. Throws lunakit::Error
// "<path>: <problem>" (a missing folder, manifest or model file, malformed JSON, another format,
// an unknown version or model format, a file named outside the folder, a checksum mismatch,
// options out of range).
Manifest read_manifest(const std::string& dir, const ManifestFormat& format = {});

// A loaded, checked bundle. Copies share the loaded models (cheap to copy).
class Bundle {
 public:
  // Reads dir/manifest.json (read_manifest) and the models it names (onto the CPU). Throws
  // lunakit::Error "<path>: <problem>" for what read_manifest refuses, a file that is not
  // TorchScript (or not an AOTInductor package; or "this build cannot load AOTInductor packages"
  // where lunakit was built without the loader), or a model that fails on
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
