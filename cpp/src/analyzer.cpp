// Analyzer: python/lunakit/pipeline/analyze.py analyze() in C++, step for step (see lunakit/analyzer.h).
#include "lunakit/analyzer.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "bundle_impl.h"
#include "lunakit/error.h"
#include "lunakit/ops.h"
#include "lunakit/resample.h"
#include "lunakit/version.h"

namespace lunakit {

struct Analyzer::Impl {
  PipelineOptions options;
  std::string bundle_dir;
  std::map<std::string, std::string> model_file;
  torch::Device device = torch::kCPU;
  // Where the ops run: the device, or the CPU when the library has no CUDA kernels.
  torch::Device ops_device = torch::kCPU;
  std::shared_ptr<Model> seg;
  std::shared_ptr<Model> cls;
  std::shared_ptr<Model> mal;  // null without a malignancy model
};

namespace {

torch::Device parse_device(const std::string& name) {
  const bool is_cpu = name == "cpu";
  const bool is_cuda = name == "cuda" || name.rfind("cuda:", 0) == 0;
  if (!is_cpu && !is_cuda) throw Error("device " + name + ": only cpu, cuda and cuda:N are supported");
  int index = -1;
  if (name.size() > 5) {
    const std::string digits = name.substr(5);
    if (digits.empty() || digits.size() > 3 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) {
      throw Error("device " + name + ": unknown device");
    }
    index = std::stoi(digits);
  }
  if (is_cpu) return torch::kCPU;
  if (!torch::cuda::is_available()) throw Error("device " + name + ": no CUDA GPU is available on this machine");
  if (index >= static_cast<int>(torch::cuda::device_count())) {
    throw Error("device " + name + ": this machine has " + std::to_string(torch::cuda::device_count()) +
                " CUDA GPU(s)");
  }
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index < 0 ? 0 : index));
}

// The classifiers run frozen and optimized on the CPU (oneDNN with fused ReLU: 20 % less time,
// p_nodule within 1e-6; benchmarks/bench_pipeline.py); the U-Net is not, since in channels-last
// memory the optimization gains nothing there.
std::shared_ptr<Model> optimized_for_cpu(const std::shared_ptr<Model>& model, const torch::Device& device) {
  if (!device.is_cpu() || model == nullptr) return model;
  std::shared_ptr<Model> optimized = model->optimized_for_cpu();
  return optimized ? optimized : model;
}

std::shared_ptr<Model> on_device(const std::shared_ptr<Model>& model, const torch::Device& device) {
  if (device.is_cpu() || model == nullptr) return model;
  return model->to_device(device);  // a copy: the bundle's models stay on the CPU
}

// The scan checks of pipeline/analyze.py _check_scan.
void check_volume(const Volume& volume, const PipelineOptions& options) {
  const torch::Tensor& v = volume.voxels;
  if (!v.defined() || v.dim() != 3) {
    throw Error("scan must be 3D [I, R, C], got " + std::to_string(v.defined() ? v.dim() : 0) + " dimension(s)");
  }
  if (v.scalar_type() != torch::kInt16 && v.scalar_type() != torch::kFloat32) {
    throw Error(std::string("scan voxels must be int16 or float32, got ") + c10::toString(v.scalar_type()));
  }
  if (v.size(0) < 2) throw Error("scan has " + std::to_string(v.size(0)) + " slice(s); at least 2 are needed");
  if (options.crop_mode == "shift") {
    for (int k = 0; k < 3; ++k) {
      if (v.size(k) < options.crop_size[k]) {
        throw Error("scan of size (" + std::to_string(v.size(0)) + ", " + std::to_string(v.size(1)) + ", " +
                    std::to_string(v.size(2)) + ") is smaller than the crop (" + std::to_string(options.crop_size[0]) +
                    ", " + std::to_string(options.crop_size[1]) + ", " + std::to_string(options.crop_size[2]) + ")");
      }
    }
  }
  if (v.is_floating_point() && !torch::isfinite(v).all().item<bool>()) {
    throw Error("scan contains NaN or infinite voxels");
  }
}

// Runs a model, turning its failure into lunakit::Error naming the bundle file.
c10::IValue run_model(Model& model, const torch::Tensor& input, const std::string& path) {
  try {
    return model.forward(input);
  } catch (const std::exception& e) {
    throw Error(path + ": model failed on input of shape " + c10::str(input.sizes()) + " (" + first_line(e) + ")");
  }
}

// analysis.clipped_slab: slices start - ctx .. stop - 1 + ctx (edges repeated) of hu, converted
// to float32 and clipped once, (stop - start + 2 ctx, R, C): every slice of a batch's stacks, each
// converted once rather than once per stack that holds it.
torch::Tensor clipped_slab(const torch::Tensor& hu, const PipelineOptions& options, int64_t start, int64_t stop) {
  const int64_t ctx = options.context_slices;
  const torch::Tensor index =
      torch::arange(start - ctx, stop + ctx, hu.options().dtype(torch::kLong)).clamp_(0, hu.size(0) - 1);
  return hu.index_select(0, index).to(torch::kFloat32).clamp_(options.hu_min, options.hu_max);
}

// analysis.stacks_channels_last: the U-Net input (B, 2 ctx + 1, R, C) of a slab, stack b = slab
// slices b .. b + 2 ctx, in channels-last memory (the layout oneDNN's convolutions run fastest in;
// the U-Net keeps it end to end). The stacks overlap in the slab, so they are one strided view of
// it and one copy.
torch::Tensor stacks_channels_last(const torch::Tensor& slab, int64_t context_slices) {
  const int64_t channels = 2 * context_slices + 1;
  const int64_t batch = slab.size(0) - 2 * context_slices;
  const int64_t plane = slab.size(1) * slab.size(2);
  return slab.as_strided({batch, channels, slab.size(1), slab.size(2)}, {plane, plane, slab.size(2), 1})
      .contiguous(torch::MemoryFormat::ChannelsLast);
}

// analysis.slice_probability: the segmenter's probability on slices start..stop-1, (B, R, C) on
// hu's device; each slice's input is slices i - ctx .. i + ctx (edges repeated), clipped.
torch::Tensor slice_probability(const torch::Tensor& hu, Model& seg, const PipelineOptions& options,
                                const std::string& seg_path, int64_t start, int64_t stop) {
  const torch::Tensor stacks =
      stacks_channels_last(clipped_slab(hu, options, start, stop), options.context_slices);  // (B, 7, R, C)
  return run_model(seg, stacks, seg_path).toTensor().select(1, 0);                           // (B, R, C)
}

// analysis.segment: per-slice probability > threshold as a bool mask [I, R, C] on hu's device.
torch::Tensor segment(const torch::Tensor& hu, Model& seg, const PipelineOptions& options, const std::string& seg_path,
                      const Progress& progress) {
  const int64_t n_slices = hu.size(0);
  torch::Tensor mask = torch::empty(hu.sizes(), hu.options().dtype(torch::kBool));
  for (int64_t start = 0; start < n_slices; start += options.seg_batch_size) {
    const int64_t stop = std::min(start + options.seg_batch_size, n_slices);
    const torch::Tensor prob = slice_probability(hu, seg, options, seg_path, start, stop);
    mask.narrow(0, start, stop - start).copy_(prob > options.seg_threshold);
    if (progress) progress("segment", stop, n_slices);
  }
  return mask;
}

// analysis._positive_probability: probability of class 1 per crop, float64.
torch::Tensor positive_probability(Model& model, const torch::Tensor& crops, const std::string& path) {
  const c10::IValue result = run_model(model, crops, path);
  return result.toTupleRef().elements()[1].toTensor().select(1, 1).to(torch::kFloat64);  // (B,)
}

// analysis._large_enough: keeps the components whose equal-volume diameter reaches
// min_diameter_mm (compared as volumes, as Python does); returns how many are left.
// int16 HU on the CPU, what resample() takes: float voxels rounded half to even, as a scan reader
// turns them into HU.
Volume hu_volume(const Volume& volume) {
  if (volume.voxels.scalar_type() == torch::kInt16) return volume;
  const torch::Tensor hu = torch::round(volume.voxels.to(torch::kCPU, torch::kFloat64)).clamp(-32768, 32767);
  return Volume{hu.to(torch::kInt16), volume.geometry};
}

int64_t keep_large_enough(ops::ComponentStats& stats, const Geometry& geometry, double min_diameter_mm) {
  if (min_diameter_mm <= 0.0) return stats.voxel_count.size(0);
  const auto& spacing = geometry.spacing_xyz();
  const double voxel_volume_mm3 = spacing[0] * spacing[1] * spacing[2];
  const double d = min_diameter_mm;
  const torch::Tensor keep =
      torch::nonzero(stats.voxel_count.to(torch::kFloat64) * voxel_volume_mm3 >= M_PI / 6.0 * d * d * d).flatten();
  stats.voxel_count = stats.voxel_count.index_select(0, keep);
  stats.bbox_min = stats.bbox_min.index_select(0, keep);
  stats.bbox_max = stats.bbox_max.index_select(0, keep);
  stats.center_irc = stats.center_irc.index_select(0, keep);
  stats.weight_sum = stats.weight_sum.index_select(0, keep);
  return keep.size(0);
}

// analysis.group: erosion, connected components and their statistics (voxel counts, boxes,
// centers weighted by clip(HU) - hu_min + 1, of each component's core with center_mode "core"),
// then the components large enough; on the ops device. A count of 0 leaves the stats undefined.
ops::ComponentStats group(const torch::Tensor& hu, torch::Tensor mask, const PipelineOptions& options,
                          const Geometry& geometry) {
  for (int64_t k = 0; k < options.erosion_iterations; ++k) mask = ops::binary_erode(mask);
  const ops::Components components = ops::label_components(mask, options.connectivity);
  if (components.count == 0) return {};
  const torch::Tensor weights = hu.to(torch::kFloat32).clamp(options.hu_min, options.hu_max) + (1.0 - options.hu_min);
  ops::ComponentStats stats = ops::component_stats(components.labels, components.count, weights);
  if (options.center_mode == "core") {  // the weighted center of each component's core
    const torch::Tensor core_labels =
        torch::where(ops::component_cores(components.labels, components.count), components.labels, 0);
    stats.center_irc = ops::component_stats(core_labels, components.count, weights).center_irc;
  }
  if (keep_large_enough(stats, geometry, options.min_diameter_mm) == 0) return {};
  return stats;
}

// The classifiers' outputs per candidate, float64 [K] on the model device; p_malignant is NaN
// where the malignancy model did not run and undefined without one.
struct Scores {
  torch::Tensor p_nodule;
  torch::Tensor p_malignant;
};

// The models of one analysis and the bundle files they came from (for error messages).
struct ClassifierModels {
  Model& cls;
  Model* mal;  // null without a malignancy model
  std::string cls_path;
  std::string mal_path;
};

ops::CropOptions crop_options(const PipelineOptions& options) {
  ops::CropOptions crop;
  crop.size = options.crop_size;
  crop.mode = options.crop_mode;
  crop.fill = options.hu_min;
  crop.clip = std::make_pair(options.hu_min, options.hu_max);
  return crop;
}

// analysis.classify: crops cut batch by batch (memory holds one batch of crops) through the nodule
// classifier and the malignancy classifier.
Scores classify(const torch::Tensor& hu_ops, const torch::Tensor& centers_irc, const ClassifierModels& models,
                const PipelineOptions& options, const torch::Device& device, const Progress& progress) {
  const int64_t count = centers_irc.size(0);
  const ops::CropOptions crop = crop_options(options);
  const auto float64 = centers_irc.options().dtype(torch::kFloat64).device(device);
  Scores scores;
  scores.p_nodule = torch::empty({count}, float64);
  if (models.mal) scores.p_malignant = torch::full({count}, std::nan(""), float64);
  for (int64_t start = 0; start < count; start += options.cls_batch_size) {
    const int64_t stop = std::min(start + options.cls_batch_size, count);
    const torch::Tensor crops =
        ops::extract_crops(hu_ops, centers_irc.narrow(0, start, stop - start), crop).to(device);  // (B, 1, 32, 48, 48)
    torch::Tensor p_batch = scores.p_nodule.narrow(0, start, stop - start);
    p_batch.copy_(positive_probability(models.cls, crops, models.cls_path));
    if (models.mal) {
      torch::Tensor chosen = torch::arange(stop - start, float64.dtype(torch::kLong));
      if (options.malignancy_on == "nodules") chosen = torch::nonzero(p_batch > options.nodule_threshold).flatten();
      if (chosen.numel() > 0) {
        scores.p_malignant.index_put_(
            {chosen + start}, positive_probability(*models.mal, crops.index_select(0, chosen), models.mal_path));
      }
    }
    if (progress) progress("classify", stop, count);
  }
  return scores;
}

// analysis._findings: one Finding per candidate (CPU tensors), sorted by p_nodule, highest first.
std::vector<Finding> make_findings(const ops::ComponentStats& stats, const Scores& scores, const Geometry& g) {
  const torch::Tensor centers_irc = stats.center_irc.cpu().contiguous();
  const torch::Tensor voxel_count = stats.voxel_count.cpu();
  const torch::Tensor bbox_min = stats.bbox_min.cpu();
  const torch::Tensor bbox_max = stats.bbox_max.cpu();
  const torch::Tensor p_nodule = scores.p_nodule.cpu();
  const torch::Tensor p_malignant =
      scores.p_malignant.defined() ? scores.p_malignant.cpu().contiguous() : torch::Tensor();
  const double voxel_volume_mm3 = g.spacing_xyz()[0] * g.spacing_xyz()[1] * g.spacing_xyz()[2];
  const auto center = centers_irc.accessor<double, 2>();
  const auto voxels = voxel_count.accessor<int64_t, 1>();
  const auto bmin = bbox_min.accessor<int64_t, 2>();
  const auto bmax = bbox_max.accessor<int64_t, 2>();
  const auto pn = p_nodule.accessor<double, 1>();
  std::vector<Finding> findings(static_cast<size_t>(voxel_count.size(0)));
  for (int64_t k = 0; k < voxel_count.size(0); ++k) {
    Finding& f = findings[static_cast<size_t>(k)];
    f.center_irc = {center[k][0], center[k][1], center[k][2]};
    f.center_xyz = g.irc_to_xyz(f.center_irc);
    f.voxel_count = voxels[k];
    f.bbox_min_irc = {bmin[k][0], bmin[k][1], bmin[k][2]};
    f.bbox_max_irc = {bmax[k][0], bmax[k][1], bmax[k][2]};
    const double volume_mm3 = static_cast<double>(voxels[k]) * voxel_volume_mm3;
    f.diameter_mm = std::pow(6.0 * volume_mm3 / M_PI, 1.0 / 3.0);
    f.p_nodule = pn[k];
    if (p_malignant.defined()) {
      const double m = p_malignant.data_ptr<double>()[k];
      if (!std::isnan(m)) f.p_malignant = m;
    }
  }
  // Stable: equal scores keep the components' raster order.
  std::stable_sort(findings.begin(), findings.end(),
                   [](const Finding& a, const Finding& b) { return a.p_nodule > b.p_nodule; });
  return findings;
}

}  // namespace

Analyzer::Analyzer(const Bundle& bundle, const AnalyzerOptions& options) : impl_(std::make_shared<Impl>()) {
  const Bundle::Impl& b = bundle.impl();
  if (options.seg_batch_size < 0 || options.cls_batch_size < 0)
    throw Error("batch sizes must be >= 0 (0: the bundle's)");
  if (options.threads < 0) throw Error("threads must be >= 0 (0: torch's default)");
  impl_->options = b.options;
  if (options.seg_batch_size > 0) impl_->options.seg_batch_size = options.seg_batch_size;
  if (options.cls_batch_size > 0) impl_->options.cls_batch_size = options.cls_batch_size;
  impl_->bundle_dir = b.dir;
  impl_->model_file = b.model_file;
  impl_->device = parse_device(options.device);
  impl_->ops_device = (impl_->device.is_cuda() && !built_with_cuda()) ? torch::Device(torch::kCPU) : impl_->device;
  if (options.threads > 0) at::set_num_threads(options.threads);
  try {
    impl_->seg = on_device(b.seg, impl_->device);
    impl_->cls = optimized_for_cpu(on_device(b.cls, impl_->device), impl_->device);
    impl_->mal = optimized_for_cpu(on_device(b.mal, impl_->device), impl_->device);
  } catch (const std::exception& e) {
    throw Error("device " + options.device + ": cannot move the models there (" + first_line(e) + ")");
  }
}

const PipelineOptions& Analyzer::options() const { return impl_->options; }
std::string Analyzer::device() const { return impl_->device.str(); }

torch::Tensor Analyzer::probability(const Volume& volume, int64_t first, int64_t count) const {
  const PipelineOptions& o = impl_->options;
  if (!o.resample_mm) return probability_voxels(volume, first, count);
  check_volume(volume, o);
  return probability_voxels(resample(hu_volume(volume), *o.resample_mm), first, count);
}

std::vector<Finding> Analyzer::analyze(const Volume& volume, const Progress& progress) const {
  const PipelineOptions& o = impl_->options;
  if (!o.resample_mm) return analyze_voxels(volume, progress);
  check_volume(volume, o);
  const Volume analyzed = resample(hu_volume(volume), *o.resample_mm);
  std::vector<Finding> findings = analyze_voxels(analyzed, progress);
  to_source_grid(findings, volume, analyzed);
  return findings;
}

torch::Tensor Analyzer::probability_voxels(const Volume& volume, int64_t first, int64_t count) const {
  Impl& s = *impl_;
  const PipelineOptions& o = s.options;
  check_volume(volume, o);
  if (first < 0 || count < 1 || first > volume.slices() - count) {
    throw Error("slices " + std::to_string(first) + ".." + std::to_string(first + count - 1) +
                " are not all inside the scan's " + std::to_string(volume.slices()) + " slices");
  }
  c10::InferenceMode inference;
  try {
    const torch::Tensor hu = volume.voxels.to(s.device).contiguous();  // (I, R, C)
    torch::Tensor prob = torch::empty({count, volume.rows(), volume.cols()}, torch::kFloat32);
    const std::string seg_path = s.bundle_dir + "/" + s.model_file.at("seg");
    for (int64_t start = first; start < first + count; start += o.seg_batch_size) {
      const int64_t stop = std::min(start + o.seg_batch_size, first + count);
      prob.narrow(0, start - first, stop - start).copy_(slice_probability(hu, *s.seg, o, seg_path, start, stop));
    }
    return prob;
  } catch (const c10::Error& e) {
    throw Error("segmentation failed: " + first_line(e));
  }
}

std::vector<Finding> Analyzer::analyze_voxels(const Volume& volume, const Progress& progress) const {
  Impl& s = *impl_;
  const PipelineOptions& o = s.options;
  const std::string dir = s.bundle_dir + "/";
  check_volume(volume, o);
  c10::InferenceMode inference;
  try {
    const torch::Tensor hu = volume.voxels.to(s.device).contiguous();  // no copy for a contiguous CPU volume on CPU
    const torch::Tensor mask = segment(hu, *s.seg, o, dir + s.model_file.at("seg"), progress);
    const torch::Tensor hu_ops = s.ops_device == s.device ? hu : hu.to(s.ops_device);
    const ops::ComponentStats stats = group(hu_ops, mask.to(s.ops_device), o, volume.geometry);
    if (progress) progress("group", 1, 1);  // after the stats: "group" = erode + label + stats
    if (!stats.voxel_count.defined()) return {};
    const ClassifierModels models{*s.cls, s.mal.get(), dir + s.model_file.at("cls"),
                                  s.mal ? dir + s.model_file.at("mal") : std::string()};
    const Scores scores = classify(hu_ops, stats.center_irc, models, o, s.device, progress);
    return make_findings(stats, scores, volume.geometry);
  } catch (const c10::Error& e) {
    throw Error("analysis failed: " + first_line(e));
  }
}

}  // namespace lunakit
