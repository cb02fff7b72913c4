// component_stats on CUDA: one thread per segment of kSegment voxels along C, summing runs of
// equal labels locally and flushing each run to its component with atomics (a handful of
// atomics per run instead of per voxel). Counts, boxes and unweighted coordinate sums are
// integer atomics (exact, order-free); weighted sums are float64 atomicAdd.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <limits>

#include "../ops.h"
#include "../voxel_kernels.h"
#include "launch.cuh"

namespace lunakit::ops::detail {
namespace {

using namespace lunakit::ops::cuda;  // blocks_for, grid_first, grid_stride, kThreads

constexpr int64_t kSegment = 32;

using ull = unsigned long long;

struct StatsBuffers {
  ull* count;            // [K]
  long long* lo;         // [K, 3]
  long long* hi;         // [K, 3]
  ull* sum_irc;          // [K, 3] unweighted coordinate sums
  double* weight;        // [K]
  double* weighted_irc;  // [K, 3]
  long long* bad_index;  // first voxel whose label is outside 0..count (numel if none)
};

template <bool Weighted>
__device__ __forceinline__ void flush_run(const StatsBuffers& b, int32_t label, int64_t i, int64_t r, int64_t begin,
                                          int64_t end, double run_weight, double run_weight_c) {
  const int64_t k = label - 1, len = end - begin;
  atomicAdd(b.count + k, static_cast<ull>(len));
  atomicMin(b.lo + k * 3 + 0, static_cast<long long>(i));
  atomicMin(b.lo + k * 3 + 1, static_cast<long long>(r));
  atomicMin(b.lo + k * 3 + 2, static_cast<long long>(begin));
  atomicMax(b.hi + k * 3 + 0, static_cast<long long>(i));
  atomicMax(b.hi + k * 3 + 1, static_cast<long long>(r));
  atomicMax(b.hi + k * 3 + 2, static_cast<long long>(end - 1));
  if constexpr (Weighted) {
    atomicAdd(b.weight + k, run_weight);
    atomicAdd(b.weighted_irc + k * 3 + 0, run_weight * static_cast<double>(i));
    atomicAdd(b.weighted_irc + k * 3 + 1, run_weight * static_cast<double>(r));
    atomicAdd(b.weighted_irc + k * 3 + 2, run_weight_c);
  } else {
    atomicAdd(b.sum_irc + k * 3 + 0, static_cast<ull>(i * len));
    atomicAdd(b.sum_irc + k * 3 + 1, static_cast<ull>(r * len));
    atomicAdd(b.sum_irc + k * 3 + 2, static_cast<ull>((begin + end - 1) * len / 2));
  }
}

template <bool Weighted, typename W>
__global__ void stats_kernel(const int32_t* __restrict__ labels, const W* __restrict__ weights, Dims d, int64_t count,
                             StatsBuffers b) {
  const int64_t segments_per_row = (d.c + kSegment - 1) / kSegment;
  const int64_t n = d.i * d.r * segments_per_row;
  for (int64_t t = grid_first(); t < n; t += grid_stride()) {
    const int64_t row = t / segments_per_row;
    const int64_t c_begin = (t % segments_per_row) * kSegment;
    const int64_t c_end = c_begin + kSegment < d.c ? c_begin + kSegment : d.c;
    const int64_t i = row / d.r, r = row % d.r;
    const int32_t* lab = labels + row * d.c;
    int32_t current = 0;
    int64_t run_begin = c_begin;
    double run_weight = 0.0, run_weight_c = 0.0;
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int32_t l = lab[c];
      if (l != current) {
        if (current > 0) flush_run<Weighted>(b, current, i, r, run_begin, c, run_weight, run_weight_c);
        current = l;
        run_begin = c;
        run_weight = run_weight_c = 0.0;
        if (l < 0 || l > count) {
          atomicMin(b.bad_index, static_cast<long long>(row * d.c + c));
          current = 0;
        }
      }
      if constexpr (Weighted) {
        if (current > 0) {
          const auto w = static_cast<double>(weights[row * d.c + c]);
          run_weight += w;
          run_weight_c += w * static_cast<double>(c);
        }
      }
    }
    if (current > 0) flush_run<Weighted>(b, current, i, r, run_begin, c_end, run_weight, run_weight_c);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> component_stats_cuda(
    const at::Tensor& labels, int64_t count, const std::optional<at::Tensor>& weights) {
  check_component_stats(labels, count, weights);
  TORCH_CHECK_VALUE(labels.is_cuda(), "component_stats: expected CUDA tensors, got ", labels.device());
  const c10::cuda::CUDAGuard guard(labels.device());
  const bool weighted = weights.has_value() && weights->defined();
  const at::Tensor lab = labels.contiguous();
  const at::Tensor w = weighted ? weights->contiguous() : at::Tensor();
  const Dims d{lab.size(0), lab.size(1), lab.size(2)};
  const auto i64 = lab.options().dtype(at::kLong);
  const auto f64 = lab.options().dtype(at::kDouble);

  at::Tensor voxel_count = at::zeros({count}, i64);
  at::Tensor bbox_min = at::full({count, 3}, std::numeric_limits<int64_t>::max(), i64);
  at::Tensor bbox_max = at::full({count, 3}, -1, i64);
  at::Tensor sum_irc = at::zeros({weighted ? 0 : count, 3}, i64);
  at::Tensor weight = at::zeros({weighted ? count : 0}, f64);
  at::Tensor weighted_irc = at::zeros({weighted ? count : 0, 3}, f64);
  at::Tensor bad_index = at::full({1}, d.numel(), i64);
  StatsBuffers b{reinterpret_cast<ull*>(voxel_count.data_ptr<int64_t>()),
                 reinterpret_cast<long long*>(bbox_min.data_ptr<int64_t>()),
                 reinterpret_cast<long long*>(bbox_max.data_ptr<int64_t>()),
                 reinterpret_cast<ull*>(sum_irc.data_ptr<int64_t>()),
                 weight.data_ptr<double>(),
                 weighted_irc.data_ptr<double>(),
                 reinterpret_cast<long long*>(bad_index.data_ptr<int64_t>())};

  if (d.numel() > 0) {
    const int64_t n_segments = d.i * d.r * ((d.c + kSegment - 1) / kSegment);
    const auto stream = at::cuda::getCurrentCUDAStream();
    if (weighted) {
      AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "component_stats_cuda", [&] {
        stats_kernel<true, scalar_t><<<blocks_for(n_segments), kThreads, 0, stream>>>(
            lab.data_ptr<int32_t>(), w.data_ptr<scalar_t>(), d, count, b);
      });
    } else {
      stats_kernel<false, float>
          <<<blocks_for(n_segments), kThreads, 0, stream>>>(lab.data_ptr<int32_t>(), nullptr, d, count, b);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t bad = bad_index.item<int64_t>();  // syncs the stream
    if (bad < d.numel()) {
      const int64_t value = lab.view({-1})[bad].item<int32_t>();
      const int64_t c = bad % d.c, row = bad / d.c;
      TORCH_CHECK_VALUE(false, "component_stats: labels hold ", value, " at irc (", row / d.r, ", ", row % d.r, ", ", c,
                        "), outside 0..count (", count, ")");
    }
  }

  // An empty component (a label that never occurs) has bbox -1 and a NaN center.
  const at::Tensor empty = voxel_count.eq(0).unsqueeze(1);  // (K, 1)
  bbox_min.masked_fill_(empty, -1);
  bbox_max.masked_fill_(empty, -1);
  at::Tensor weight_sum = weighted ? weight : voxel_count.to(at::kDouble);
  at::Tensor moments = weighted ? weighted_irc : sum_irc.to(at::kDouble);  // (K, 3)
  at::Tensor center_irc = moments / weight_sum.unsqueeze(1);
  return {voxel_count, bbox_min, bbox_max, center_irc, weight_sum};
}

}  // namespace
}  // namespace lunakit::ops::detail

TORCH_LIBRARY_IMPL(lunakit, CUDA, m) { m.impl("component_stats", &lunakit::ops::detail::component_stats_cuda); }
