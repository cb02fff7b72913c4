#pragma once
// lunakit::Analyzer: docs/design.md's pipeline in C++, over the same ops (lunakit/ops.h) and the
// bundle's TorchScript models, step for step as python/lunakit/pipeline/analyze.py analyze() runs it,
// so both give the same findings for the same scan and bundle:
//
//   per axial slice i: channels = slices i - ctx .. i + ctx (edges repeated), clip to
//   [hu_min, hu_max], float32, batches of seg_batch_size -> seg model -> prob[:, 0] > seg_threshold
//   -> binary_erode x erosion_iterations -> label_components(connectivity)
//   -> component_stats weighted by clip(HU) - hu_min + 1 -> per batch of cls_batch_size
//   candidates: extract_crops(crop_size, crop_mode, fill hu_min, clip) -> cls model ->
//   p_nodule = softmax[:, 1]; mal model (on all the batch's candidates, or only those with
//   p_nodule > nodule_threshold) -> p_malignant
//   -> findings sorted by p_nodule, highest first (stable: ties keep the raster order).
// For speed (docs/pipeline.md, "Exact mode"), each batch's slices are converted once and the U-Net
// runs in channels-last memory; on the CPU the classifiers run frozen and optimized for inference.
//
// Example (a PACS plug-in that already holds the pixels):
//   lunakit::Bundle bundle = lunakit::Bundle::load("/opt/models/lunakit-bundle");
//   lunakit::Analyzer analyzer(bundle, {.device = "cuda"});
//   lunakit::Volume volume = lunakit::Volume::from_buffer(pixels, slices, rows, cols, geometry);
//   for (const lunakit::Finding& f : analyzer.analyze(volume)) { ... }
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lunakit/bundle.h"
#include "lunakit/finding.h"
#include "lunakit/volume.h"

namespace lunakit {

// How to run (not what to compute: the pipeline's numbers come from the bundle).
struct AnalyzerOptions {
  std::string device = "cpu";  // "cpu", "cuda" or "cuda:N"
  int threads = 0;             // > 0: sets torch's process-wide intra-op thread count
  int64_t seg_batch_size = 0;  // slices per U-Net batch; 0: the bundle's
  int64_t cls_batch_size = 0;  // crops per classifier batch; 0: the bundle's
  // "fp32" (exact), "bf16" (fast: bf16 autocast, fp32 rechecks near the thresholds) or "auto"
  // (bf16 where native_bf16(device)); empty: the bundle's (PipelineOptions::precision, "fp32"
  // unless the bundle says otherwise). docs/pipeline.md, "Fast mode".
  std::string precision;
};

// Whether a device computes bf16 natively: a CPU with AVX-512 BF16 or AMX-BF16 (from
// /proc/cpuinfo; "bf16" among an ARM CPU's features), a CUDA GPU of compute capability >= 8.0
// (known only where the library has CUDA kernels; false otherwise). Throws lunakit::Error for an
// unknown device name.
bool native_bf16(const std::string& device);

// Progress of a running analysis: (stage, done, total) with stage "segment" (slices), "group"
// (1 of 1) and "classify" (candidates, both classifiers), as the Python pipeline reports it.
using Progress = std::function<void(const std::string& stage, int64_t done, int64_t total)>;

class Analyzer {
 public:
  // Throws lunakit::Error for an unknown device, "cuda" where no CUDA GPU is available (or the
  // library was built without CUDA kernels), or batch sizes < 0.
  Analyzer(const Bundle& bundle, const AnalyzerOptions& options = {});

  // Findings of one scan, sorted by p_nodule (highest first). The volume (int16 or float32
  // [I, R, C], any device) is only read. With the option resample_mm, the analysis runs on the
  // resampled scan and the findings' indices are the given volume's (lunakit/resample.h). Throws lunakit::Error for a
  // volume that is not 3D, has fewer than 2 slices, is smaller than the crop in "shift" mode, or holds NaN or infinite
  // values, and when a model fails on the scan. One analyze() at a time per Analyzer.
  std::vector<Finding> analyze(const Volume& volume, const Progress& progress = {}) const;

  // The segmenter's probability on slices first .. first + count - 1, float32 [count, R, C] on the
  // CPU, from the same inputs analyze() thresholds (context slices, edges repeated, clipped HU):
  // for inspecting or checking the U-Net. Throws lunakit::Error as analyze() does, and for a
  // slice range that is empty or leaves the volume. With resample_mm, slices of the resampled scan.
  torch::Tensor probability(const Volume& volume, int64_t first, int64_t count) const;

  // The bundle's, with the batch sizes and the precision in effect ("auto" resolved: "fp32" or "bf16").
  const PipelineOptions& options() const;
  std::string device() const;

 private:
  std::vector<Finding> analyze_voxels(const Volume& volume, const Progress& progress) const;
  torch::Tensor probability_voxels(const Volume& volume, int64_t first, int64_t count) const;
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace lunakit
