// Analyzer: python/lunakit/pipeline/analyze.py analyze() in C++, step for step (see lunakit/analyzer.h).
#include "lunakit/analyzer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <numeric>
#include <sstream>
#include <tuple>
#include <vector>

#include "bundle_impl.h"
#include "lunakit/error.h"
#include "lunakit/ops.h"
#include "lunakit/resample.h"
#include "lunakit/version.h"

namespace lunakit {

#ifdef LUNAKIT_WITH_CUDA
namespace ops::cuda {
int compute_capability_major(int device_index);  // ops/cuda/device_cuda.cu
}  // namespace ops::cuda
#endif

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
  // Fast mode (precision "bf16"): the classifiers as loaded, which bf16 autocast reaches (the
  // CPU-optimized copies above run oneDNN's fp32 kernels), and the U-Net's tile halo per
  // (rows % kTile, cols % kTile) (-1: whole slices), probed on first use.
  bool fast = false;
  std::shared_ptr<Model> cls_autocast;
  std::shared_ptr<Model> mal_autocast;
  std::map<std::pair<int64_t, int64_t>, int64_t> halos;
};

namespace {

// Fast mode's numbers, python/lunakit/pipeline/precision.py's (docs/pipeline.md, "Fast mode").
constexpr double kSegMargin = 0.45;  // |p_bf16 - seg_threshold| below this: recheck in fp32
constexpr double kClsMargin = 0.4;   // p_nodule_bf16 above nodule_threshold - this: score again in fp32
constexpr int64_t kTile = 32;        // side of the squares of a slice recomputed in fp32
constexpr std::array<int64_t, 4> kHalos{24, 32, 48, 64};

// bf16 autocast on one device type for the guard's lifetime, as Python's torch.autocast.
class Bf16Autocast {
 public:
  explicit Bf16Autocast(c10::DeviceType type)
      : type_(type), enabled_(at::autocast::is_autocast_enabled(type)), dtype_(at::autocast::get_autocast_dtype(type)) {
    at::autocast::set_autocast_enabled(type_, true);
    at::autocast::set_autocast_dtype(type_, at::kBFloat16);
    at::autocast::increment_nesting();
  }
  ~Bf16Autocast() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(type_, enabled_);
    at::autocast::set_autocast_dtype(type_, dtype_);
  }
  Bf16Autocast(const Bf16Autocast&) = delete;
  Bf16Autocast& operator=(const Bf16Autocast&) = delete;

 private:
  c10::DeviceType type_;
  bool enabled_;
  at::ScalarType dtype_;
};

bool cpu_native_bf16() {
  static const bool native = [] {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("flags", 0) != 0 && line.rfind("Features", 0) != 0) continue;
      std::istringstream words(line.substr(line.find(':') + 1));
      std::string word;
      while (words >> word) {
        if (word == "avx512_bf16" || word == "amx_bf16" || word == "bf16") return true;
      }
      return false;  // the first CPU's flags decide
    }
    return false;
  }();
  return native;
}

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

// precision.dilate: binary dilation by the 6-connected cross.
torch::Tensor dilate(const torch::Tensor& mask) {
  torch::Tensor out = mask.clone();
  for (int64_t dim = 0; dim < 3; ++dim) {
    const int64_t n = mask.size(dim);
    if (n < 2) continue;
    out.narrow(dim, 1, n - 1).logical_or_(mask.narrow(dim, 0, n - 1));
    out.narrow(dim, 0, n - 1).logical_or_(mask.narrow(dim, 1, n - 1));
  }
  return out;
}

// precision.recheck_voxels: the near-threshold voxels within reach of an eroded voxel they leave
// undecided (eroding the sure positives and eroding sure positives plus near voxels disagree
// there); only these can change the eroded mask, so only these need their fp32 value.
torch::Tensor recheck_voxels(const torch::Tensor& mask, const torch::Tensor& near, int64_t erosion_iterations) {
  torch::Tensor lower = mask.logical_and(near.logical_not());
  torch::Tensor upper = lower.logical_or(near);
  for (int64_t k = 0; k < erosion_iterations; ++k) {
    lower = ops::binary_erode(lower);
    upper = ops::binary_erode(upper);
  }
  torch::Tensor undecided = upper.logical_and(lower.logical_not());
  for (int64_t k = 0; k < erosion_iterations; ++k) undecided = dilate(undecided);
  return near.logical_and(undecided);
}

// precision.window_start: a window of `size` holding [first, first + kTile) with `halo` on each
// side, kept inside [0, length).
int64_t window_start(int64_t first, int64_t halo, int64_t size, int64_t length) {
  return std::min(std::max<int64_t>(first - halo, 0), length - size);
}

// precision.tile_halo's probe: the smallest halo of kHalos with which the U-Net's fp32 output on
// a window equals its whole-image output inside the tile (a window inside a random-HU probe image
// and one at its far corner, placed on the pooling grid as in a rows x cols slice), or -1.
int64_t probe_halo(Model& seg, int64_t context_slices, const torch::Device& device, int64_t rows, int64_t cols) {
  const int64_t size_r = 3 * 64 + rows % kTile;
  const int64_t size_c = 3 * 64 + cols % kTile;
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(0);
  const torch::Tensor image = (torch::rand({1, 2 * context_slices + 1, size_r, size_c}, generator) * 2000.0 - 1000.0)
                                  .to(device)
                                  .contiguous(torch::MemoryFormat::ChannelsLast);
  try {
    const torch::Tensor whole = seg.forward(image).toTensor().select(0, 0).select(0, 0);
    for (const int64_t halo : kHalos) {
      const int64_t size = kTile + 2 * halo;
      if (size > std::min({rows, cols, size_r, size_c})) return -1;
      const std::array<std::array<int64_t, 2>, 2> corners{{{64 - halo, 64 - halo}, {size_r - size, size_c - size}}};
      const std::array<std::array<int64_t, 2>, 2> tiles{{{64, 64}, {size_r - kTile, size_c - kTile}}};
      std::vector<torch::Tensor> windows;
      for (const auto& c : corners) windows.push_back(image.narrow(2, c[0], size).narrow(3, c[1], size));
      const torch::Tensor out =
          seg.forward(torch::cat(windows).contiguous(torch::MemoryFormat::ChannelsLast)).toTensor().select(1, 0);
      bool exact = true;
      for (size_t k = 0; k < 2; ++k) {
        const torch::Tensor got = out[static_cast<int64_t>(k)]
                                      .narrow(0, tiles[k][0] - corners[k][0], kTile)
                                      .narrow(1, tiles[k][1] - corners[k][1], kTile);
        const torch::Tensor want = whole.narrow(0, tiles[k][0], kTile).narrow(1, tiles[k][1], kTile);
        exact = exact && torch::allclose(got, want, 0.0, 1e-5);
      }
      if (exact) return halo;
    }
  } catch (const std::exception&) {  // a model of fixed input size
    return -1;
  }
  return -1;
}

// analysis.recheck_in_fp32: sets mask's `recheck` voxels from the fp32 U-Net, each kTile square
// holding one run as a window with the halo (whole slices for a halo of -1); windows batched to
// about seg_batch_size slices of pixels. Returns the number of windows.
int64_t recheck_in_fp32(const torch::Tensor& hu, Model& seg, const PipelineOptions& options,
                        const std::string& seg_path, torch::Tensor& mask, const torch::Tensor& recheck, int64_t halo) {
  const int64_t rows = hu.size(1);
  const int64_t cols = hu.size(2);
  int64_t tile = kTile;
  int64_t size_r = kTile + 2 * halo;
  int64_t size_c = size_r;
  if (halo < 0) {
    tile = std::max(rows, cols);
    size_r = rows;
    size_c = cols;
    halo = 0;
  }
  const torch::Tensor index = torch::nonzero(recheck);  // (V, 3)
  const torch::Tensor keys =
      std::get<0>(torch::unique_dim(torch::stack({index.select(1, 0), index.select(1, 1).div(tile, "floor"),
                                                  index.select(1, 2).div(tile, "floor")},
                                                 1),
                                    0))
          .cpu();
  const auto key = keys.accessor<int64_t, 2>();
  const int64_t count = keys.size(0);
  const int64_t per_batch = std::max<int64_t>(1, options.seg_batch_size * rows * cols / (size_r * size_c));
  for (int64_t first = 0; first < count; first += per_batch) {
    const int64_t last = std::min(first + per_batch, count);
    std::vector<torch::Tensor> windows;
    std::vector<std::array<int64_t, 5>> places;  // slice, row, col, window row, window col
    int64_t stack_slice = -1;
    torch::Tensor stack;
    for (int64_t t = first; t < last; ++t) {
      const int64_t i = key[t][0];
      const int64_t r0 = key[t][1] * tile;
      const int64_t c0 = key[t][2] * tile;
      if (i != stack_slice) {
        stack = clipped_slab(hu, options, i, i + 1);  // (7, R, C): slice i's stack
        stack_slice = i;
      }
      const int64_t wr = window_start(r0, halo, size_r, rows);
      const int64_t wc = window_start(c0, halo, size_c, cols);
      windows.push_back(stack.narrow(1, wr, size_r).narrow(2, wc, size_c));
      places.push_back({i, r0, c0, wr, wc});
    }
    const torch::Tensor prob =
        run_model(seg, torch::stack(windows).contiguous(torch::MemoryFormat::ChannelsLast), seg_path)
            .toTensor()
            .select(1, 0);
    for (size_t w = 0; w < places.size(); ++w) {
      const auto [i, r0, c0, wr, wc] = places[w];
      const int64_t height = std::min(r0 + tile, rows) - r0;
      const int64_t width = std::min(c0 + tile, cols) - c0;
      const torch::Tensor exact =
          prob[static_cast<int64_t>(w)].narrow(0, r0 - wr, height).narrow(1, c0 - wc, width) > options.seg_threshold;
      torch::Tensor region = mask[i].narrow(0, r0, height).narrow(1, c0, width);
      region.copy_(torch::where(recheck[i].narrow(0, r0, height).narrow(1, c0, width), exact, region));
    }
  }
  return count;
}

// analysis.segment: per-slice probability > threshold as a bool mask [I, R, C] on hu's device. In
// fast mode the batches run under bf16 autocast and the voxels bf16 may have put on the wrong side
// of the threshold, where that can change the eroded mask, are computed again in fp32 (halo: the
// U-Net's tile halo, -1 for whole slices; ops_device: where the erosions of the recheck run).
torch::Tensor segment(const torch::Tensor& hu, Model& seg, const PipelineOptions& options, const std::string& seg_path,
                      const Progress& progress, bool fast, const std::function<int64_t()>& halo,
                      const torch::Device& ops_device) {
  const int64_t n_slices = hu.size(0);
  torch::Tensor mask = torch::empty(hu.sizes(), hu.options().dtype(torch::kBool));
  torch::Tensor near;
  if (fast) near = torch::empty(hu.sizes(), hu.options().dtype(torch::kBool));
  for (int64_t start = 0; start < n_slices; start += options.seg_batch_size) {
    const int64_t stop = std::min(start + options.seg_batch_size, n_slices);
    torch::Tensor prob;
    if (fast) {
      {
        Bf16Autocast autocast(hu.device().type());
        prob = slice_probability(hu, seg, options, seg_path, start, stop);
      }
      prob = prob.to(torch::kFloat32);
      near.narrow(0, start, stop - start).copy_((prob - options.seg_threshold).abs() < kSegMargin);
    } else {
      prob = slice_probability(hu, seg, options, seg_path, start, stop);
    }
    mask.narrow(0, start, stop - start).copy_(prob > options.seg_threshold);
    if (progress && !(fast && stop == n_slices)) progress("segment", stop, n_slices);  // fast: after the recheck
  }
  if (fast) {
    const torch::Tensor recheck =
        recheck_voxels(mask.to(ops_device), near.to(ops_device), options.erosion_iterations).to(hu.device());
    near = torch::Tensor();
    recheck_in_fp32(hu, seg, options, seg_path, mask, recheck, halo());
    if (progress) progress("segment", n_slices, n_slices);
  }
  return mask;
}

// analysis._positive_probability: probability of class 1 per crop, float64; with flips (the
// cls_flips option) the mean over the crops' 8 mirror images, in analysis.mirror_means' order.
torch::Tensor positive_probability(Model& model, const torch::Tensor& crops, const std::string& path, bool flips) {
  auto probability = [&](const torch::Tensor& x) {
    const c10::IValue result = run_model(model, x, path);
    return result.toTupleRef().elements()[1].toTensor().select(1, 1).to(torch::kFloat64);  // (B,)
  };
  if (!flips) return probability(crops);
  torch::Tensor total = torch::zeros({crops.size(0)}, crops.options().dtype(torch::kFloat64));
  for (int mirror = 0; mirror < 8; ++mirror) {  // bit k set: spatial axis k (dim 2 + k) flipped
    std::vector<int64_t> dims;
    for (int64_t axis = 0; axis < 3; ++axis) {
      if (mirror >> axis & 1) dims.push_back(2 + axis);
    }
    total += probability(dims.empty() ? crops : crops.flip(dims));
  }
  return total / 8.0;
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

// The components where keep (bool [K]) holds; returns how many.
int64_t keep_rows(ops::ComponentStats& stats, const torch::Tensor& keep) {
  const torch::Tensor rows = torch::nonzero(keep).flatten();
  stats.voxel_count = stats.voxel_count.index_select(0, rows);
  stats.bbox_min = stats.bbox_min.index_select(0, rows);
  stats.bbox_max = stats.bbox_max.index_select(0, rows);
  stats.center_irc = stats.center_irc.index_select(0, rows);
  stats.weight_sum = stats.weight_sum.index_select(0, rows);
  return rows.size(0);
}

int64_t keep_large_enough(ops::ComponentStats& stats, const Geometry& geometry, double min_diameter_mm) {
  if (min_diameter_mm <= 0.0) return stats.voxel_count.size(0);
  const auto& spacing = geometry.spacing_xyz();
  const double voxel_volume_mm3 = spacing[0] * spacing[1] * spacing[2];
  const double d = min_diameter_mm;
  return keep_rows(stats, stats.voxel_count.to(torch::kFloat64) * voxel_volume_mm3 >= M_PI / 6.0 * d * d * d);
}

// With lung_margin_mm, the components whose center lies within it of the lung field (all of
// them where the scan shows no lung field).
int64_t keep_near_lungs(ops::ComponentStats& stats, const torch::Tensor& hu, const std::array<double, 3>& spacing_irc,
                        const PipelineOptions& options) {
  if (!options.lung_margin_mm) return stats.voxel_count.size(0);
  const torch::Tensor lungs = ops::lung_field(hu);
  if (!lungs.any().item<bool>()) return stats.voxel_count.size(0);
  return keep_rows(stats, ops::near_mask(lungs, stats.center_irc, spacing_irc, *options.lung_margin_mm));
}

// analysis.group: erosion, connected components and their statistics (voxel counts, boxes,
// centers weighted by clip(HU) - hu_min + 1, of each component's core with center_mode "core" or
// "core3d"), then the components large enough and (lung_margin_mm) near the lungs; on the ops
// device. A count of 0 leaves the stats undefined.
ops::ComponentStats group(const torch::Tensor& hu, torch::Tensor mask, const PipelineOptions& options,
                          const Geometry& geometry) {
  for (int64_t k = 0; k < options.erosion_iterations; ++k) mask = ops::binary_erode(mask);
  const ops::Components components = ops::label_components(mask, options.connectivity);
  if (components.count == 0) return {};
  const torch::Tensor weights = hu.to(torch::kFloat32).clamp(options.hu_min, options.hu_max) + (1.0 - options.hu_min);
  ops::ComponentStats stats = ops::component_stats(components.labels, components.count, weights);
  const Vec3& xyz = geometry.spacing_xyz();
  const std::array<double, 3> spacing_irc{xyz[2], xyz[1], xyz[0]};
  if (options.center_mode != "mass") {             // the weighted center of each component's core
    std::optional<std::array<double, 3>> spacing;  // "core": in-plane depth; "core3d": 3D, in mm
    if (options.center_mode == "core3d") spacing = spacing_irc;
    const torch::Tensor core_labels =
        torch::where(ops::component_cores(components.labels, components.count, spacing), components.labels, 0);
    stats.center_irc = ops::component_stats(core_labels, components.count, weights).center_irc;
  }
  if (keep_large_enough(stats, geometry, options.min_diameter_mm) == 0) return {};
  if (keep_near_lungs(stats, hu, spacing_irc, options) == 0) return {};
  return stats;
}

// The classifiers' outputs per candidate, float64 [K] on the model device; p_malignant is NaN
// where the malignancy model did not run and undefined without one.
struct Scores {
  torch::Tensor p_nodule;
  torch::Tensor p_malignant;
};

// The models of one analysis and the bundle files they came from (for error messages). In fast
// mode (cls_autocast set) every crop is scored under bf16 autocast by the *_autocast models first.
struct ClassifierModels {
  Model& cls;
  Model* mal;  // null without a malignancy model
  std::string cls_path;
  std::string mal_path;
  Model* cls_autocast = nullptr;  // null: exact mode
  Model* mal_autocast = nullptr;
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
    const auto flags = float64.dtype(torch::kBool);
    // exact: the crops scored in fp32 (all of them in exact mode; in fast mode those whose bf16
    // p_nodule lies above nodule_threshold - kClsMargin, scored again).
    torch::Tensor exact = torch::ones({stop - start}, flags);
    if (models.cls_autocast != nullptr) {
      {
        Bf16Autocast autocast(device.type());
        p_batch.copy_(positive_probability(*models.cls_autocast, crops, models.cls_path, options.cls_flips));
      }
      exact = p_batch > options.nodule_threshold - kClsMargin;
      const torch::Tensor again = torch::nonzero(exact).flatten();
      if (again.numel() > 0) {
        p_batch.index_put_({again}, positive_probability(models.cls, crops.index_select(0, again), models.cls_path,
                                                         options.cls_flips));
      }
    } else {
      p_batch.copy_(positive_probability(models.cls, crops, models.cls_path, options.cls_flips));
    }
    if (models.mal) {
      torch::Tensor chosen = torch::ones({stop - start}, flags);
      if (options.malignancy_on == "nodules") chosen = p_batch > options.nodule_threshold;
      for (const bool fp32 : {true, false}) {
        const torch::Tensor index = torch::nonzero(chosen.logical_and(fp32 ? exact : exact.logical_not())).flatten();
        if (index.numel() == 0) continue;
        const torch::Tensor chosen_crops = crops.index_select(0, index);
        torch::Tensor p;
        if (fp32) {
          p = positive_probability(*models.mal, chosen_crops, models.mal_path, options.cls_flips);
        } else {
          Bf16Autocast autocast(device.type());
          p = positive_probability(*models.mal_autocast, chosen_crops, models.mal_path, options.cls_flips);
        }
        scores.p_malignant.index_put_({index + start}, p);
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

bool native_bf16(const std::string& device) {
  const torch::Device d = parse_device(device);
  if (d.is_cpu()) return cpu_native_bf16();
#ifdef LUNAKIT_WITH_CUDA
  return ops::cuda::compute_capability_major(d.index()) >= 8;
#else
  return false;
#endif
}

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
  if (!options.precision.empty()) {
    if (options.precision != "fp32" && options.precision != "bf16" && options.precision != "auto") {
      throw Error("precision " + options.precision + ": must be 'fp32', 'bf16' or 'auto'");
    }
    impl_->options.precision = options.precision;
  }
  impl_->device = parse_device(options.device);
  impl_->ops_device = (impl_->device.is_cuda() && !built_with_cuda()) ? torch::Device(torch::kCPU) : impl_->device;
  if (b.model_format == "aoti") {  // compiled models run as compiled, in fp32: autocast does not reach them
    if (impl_->options.precision == "bf16") {
      throw Error(
          "precision bf16: a compiled bundle (AOTInductor, ONNX) runs in fp32; fast mode needs a "
          "TorchScript bundle");
    }
    impl_->options.precision = "fp32";
  }
  if (impl_->options.precision == "auto") impl_->options.precision = native_bf16(options.device) ? "bf16" : "fp32";
  impl_->fast = impl_->options.precision == "bf16";
  if (impl_->device.is_cuda()) {
    // fp32 that is fp32 (exact mode, and fast mode's rechecks): cuDNN and cuBLAS may otherwise run
    // fp32 convolutions and matmuls in TF32. A process-wide setting, as torch has it.
    at::globalContext().setAllowTF32CuDNN(false);
    at::globalContext().setAllowTF32CuBLAS(false);
  }
  if (options.threads > 0) at::set_num_threads(options.threads);
  try {
    impl_->seg = on_device(b.seg, impl_->device);
    const std::shared_ptr<Model> cls = on_device(b.cls, impl_->device);
    const std::shared_ptr<Model> mal = on_device(b.mal, impl_->device);
    impl_->cls = optimized_for_cpu(cls, impl_->device);
    impl_->mal = optimized_for_cpu(mal, impl_->device);
    if (impl_->fast) {
      impl_->cls_autocast = cls;
      impl_->mal_autocast = mal;
    }
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
    const std::string seg_path = dir + s.model_file.at("seg");
    const auto halo = [&s, &o, &hu] {  // probed once per model and size class, outside autocast
      const std::pair<int64_t, int64_t> key{hu.size(1) % kTile, hu.size(2) % kTile};
      auto found = s.halos.find(key);
      if (found == s.halos.end()) {
        found = s.halos.emplace(key, probe_halo(*s.seg, o.context_slices, s.device, hu.size(1), hu.size(2))).first;
      }
      return found->second;
    };
    const torch::Tensor mask = segment(hu, *s.seg, o, seg_path, progress, s.fast, halo, s.ops_device);
    const torch::Tensor hu_ops = s.ops_device == s.device ? hu : hu.to(s.ops_device);
    const ops::ComponentStats stats = group(hu_ops, mask.to(s.ops_device), o, volume.geometry);
    if (progress) progress("group", 1, 1);  // after the stats: "group" = erode + label + stats
    if (!stats.voxel_count.defined()) return {};
    const ClassifierModels models{*s.cls,
                                  s.mal.get(),
                                  dir + s.model_file.at("cls"),
                                  s.mal ? dir + s.model_file.at("mal") : std::string(),
                                  s.cls_autocast.get(),
                                  s.mal_autocast.get()};
    const Scores scores = classify(hu_ops, stats.center_irc, models, o, s.device, progress);
    return make_findings(stats, scores, volume.geometry);
  } catch (const c10::Error& e) {
    throw Error("analysis failed: " + first_line(e));
  }
}

}  // namespace lunakit
