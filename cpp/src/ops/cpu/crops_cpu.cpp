// extract_crops on the CPU: one parallel task per output plane (n, i), each row a contiguous
// run along C converted to float32 and clipped in one pass.
//
// The work is memory-bound: rows of ~100 bytes scattered over a volume of hundreds of MB, and
// an output written once. Two things keep it near the machine's copy bandwidth: a software
// prefetch a few rows ahead (the hardware prefetcher stops at every 4 KiB page, i.e. every few
// rows of a 512-wide slice), and, on x86 for int16 volumes, streaming stores that write the
// output without first reading it into the cache.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "../ops.h"
#include "../voxel_kernels.h"

namespace lunakit::ops::detail {
namespace {

// One row of a crop: dst[k] = clip(src[k]) for the k inside the volume.
// Clipping in float: any window.
inline void convert_row(const float* __restrict src, float* __restrict dst, int64_t n, float lo, float hi) {
  for (int64_t k = 0; k < n; ++k) dst[k] = std::min(std::max(src[k], lo), hi);
}
inline void convert_row(const int16_t* __restrict src, float* __restrict dst, int64_t n, float lo, float hi) {
  for (int64_t k = 0; k < n; ++k) dst[k] = std::min(std::max(static_cast<float>(src[k]), lo), hi);
}
// int16 clipped in int16 (a window of integers, or one beyond int16's range), then widened:
// the same values, several times faster than clipping the widened floats.
inline void convert_row(const int16_t* __restrict src, float* __restrict dst, int64_t n, int16_t lo, int16_t hi) {
  for (int64_t k = 0; k < n; ++k) {
    int16_t v = src[k];
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    dst[k] = static_cast<float>(v);
  }
}

#if defined(__SSE2__)
// The int16 row above for a 16-byte aligned dst and n a multiple of 8: SSE2 clip, widen, and
// streaming stores (the caller issues the fence).
inline void convert_row_stream(const int16_t* src, float* dst, int64_t n, int16_t lo, int16_t hi) {
  const __m128i lo8 = _mm_set1_epi16(lo), hi8 = _mm_set1_epi16(hi);
  for (int64_t k = 0; k < n; k += 8) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k));
    v = _mm_min_epi16(_mm_max_epi16(v, lo8), hi8);
    // Sign-extend to int32: put each value in the high half of a 32-bit lane, shift back down.
    const __m128i low = _mm_srai_epi32(_mm_unpacklo_epi16(v, v), 16);
    const __m128i high = _mm_srai_epi32(_mm_unpackhi_epi16(v, v), 16);
    _mm_stream_ps(dst + k, _mm_cvtepi32_ps(low));
    _mm_stream_ps(dst + k + 4, _mm_cvtepi32_ps(high));
  }
}
#endif

// Full rows, int16 bounds, aligned output rows: the streaming path applies.
bool can_stream(const int16_t*, const float* out, int64_t s2, int16_t) {
#if defined(__SSE2__)
  return s2 % 8 == 0 && reinterpret_cast<std::uintptr_t>(out) % 16 == 0;
#else
  (void)out, (void)s2;
  return false;
#endif
}
template <typename T, typename Bound>
bool can_stream(const T*, const float*, int64_t, Bound) {
  return false;
}

// Whether a clip bound acts on int16 values exactly as an int16 bound: an integer, or beyond
// int16's range (then it clips nothing and the range's end stands in for it).
bool int16_bound(float bound, int16_t& as_int16) {
  if (bound <= -32768.0f) {
    as_int16 = -32768;
  } else if (bound >= 32767.0f) {
    as_int16 = 32767;
  } else if (std::nearbyint(bound) == bound) {
    as_int16 = static_cast<int16_t>(bound);
  } else {
    return false;
  }
  return true;
}

// Fills out (N, 1, S0, S1, S2) one (n, k0) plane of rows per task. Bound is float or int16.
template <typename T, typename Bound>
void crop_rows(const T* volume, Dims d, const int64_t* starts, int64_t n_crops, const CropArgs& a, Bound lo, Bound hi,
               float* out) {
  const int64_t s0 = a.size[0], s1 = a.size[1], s2 = a.size[2];
  const float fill = a.fill;
  constexpr int64_t kAhead = 4;  // rows prefetched ahead
  const bool stream = can_stream(volume, out, s2, lo);
  at::parallel_for(0, n_crops * s0, 4, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / s0, k0 = plane % s0;
      const int64_t i = starts[n * 3 + 0] + k0, r_start = starts[n * 3 + 1], c_start = starts[n * 3 + 2];
      // Columns [k_begin, k_end) of each row lie inside the volume.
      const int64_t k_begin = std::clamp<int64_t>(-c_start, 0, s2);
      const int64_t k_end = std::clamp<int64_t>(d.c - c_start, k_begin, s2);
      float* dst = out + plane * s1 * s2;
      for (int64_t k1 = 0; k1 < s1; ++k1, dst += s2) {
        const int64_t r = r_start + k1;
        if (i < 0 || i >= d.i || r < 0 || r >= d.r) {
          std::fill(dst, dst + s2, fill);
          continue;
        }
        const T* src = volume + (i * d.r + r) * d.c + c_start + k_begin;
        if (k1 + kAhead < s1 && r + kAhead < d.r && k_end > k_begin) {
          __builtin_prefetch(src + kAhead * d.c);
          __builtin_prefetch(src + kAhead * d.c + (k_end - k_begin) - 1);
        }
#if defined(__SSE2__)
        if constexpr (std::is_same_v<T, int16_t> && std::is_same_v<Bound, int16_t>) {
          if (stream && k_begin == 0 && k_end == s2) {
            convert_row_stream(src, dst, s2, lo, hi);
            continue;
          }
        }
#endif
        std::fill(dst, dst + k_begin, fill);
        convert_row(src, dst + k_begin, k_end - k_begin, lo, hi);
        std::fill(dst + k_end, dst + s2, fill);
      }
    }
#if defined(__SSE2__)
    if (stream) _mm_sfence();  // make the streamed rows visible before the task ends
#endif
  });
}

void fill_crops_cpu(const at::Tensor& volume, const at::Tensor& centers_irc, const CropArgs& args, at::Tensor& out) {
  TORCH_CHECK_VALUE(volume.device().is_cpu(), "extract_crops: expected CPU tensors, got ", volume.device());
  const int64_t n = centers_irc.size(0);
  if (n == 0) return;
  const at::Tensor vol = volume.contiguous();
  const at::Tensor centers = centers_irc.to(at::kDouble).contiguous();
  const Dims d{vol.size(0), vol.size(1), vol.size(2)};
  const double* c = centers.data_ptr<double>();
  const bool shift = args.mode == CropMode::kShift;
  const int64_t extent[3] = {d.i, d.r, d.c};
  std::vector<int64_t> starts(static_cast<size_t>(n) * 3);  // (N, 3) first voxel of each crop
  for (int64_t k = 0; k < n; ++k) {
    for (int axis = 0; axis < 3; ++axis) {
      starts[k * 3 + axis] = crop_start(c[k * 3 + axis], args.size[axis], extent[axis], shift);
    }
  }
  int16_t lo16 = 0, hi16 = 0;
  if (vol.scalar_type() == at::kFloat) {
    crop_rows(vol.data_ptr<float>(), d, starts.data(), n, args, args.clip_min, args.clip_max, out.data_ptr<float>());
  } else if (int16_bound(args.clip_min, lo16) && int16_bound(args.clip_max, hi16)) {
    crop_rows(vol.data_ptr<int16_t>(), d, starts.data(), n, args, lo16, hi16, out.data_ptr<float>());
  } else {
    crop_rows(vol.data_ptr<int16_t>(), d, starts.data(), n, args, args.clip_min, args.clip_max, out.data_ptr<float>());
  }
}

}  // namespace

void extract_crops_into_cpu(const at::Tensor& volume, const at::Tensor& centers_irc, at::IntArrayRef size,
                            c10::string_view mode, double fill, double clip_min, double clip_max, at::Tensor& out) {
  const CropArgs args = check_extract_crops(volume, centers_irc, size, mode, fill, clip_min, clip_max);
  check_crops_out(out, volume, centers_irc.size(0), args);
  fill_crops_cpu(volume, centers_irc, args, out);
}

at::Tensor extract_crops_cpu(const at::Tensor& volume, const at::Tensor& centers_irc, at::IntArrayRef size,
                             c10::string_view mode, double fill, double clip_min, double clip_max) {
  const CropArgs args = check_extract_crops(volume, centers_irc, size, mode, fill, clip_min, clip_max);
  at::Tensor out = at::empty({centers_irc.size(0), 1, args.size[0], args.size[1], args.size[2]},
                             volume.options().dtype(at::kFloat));  // (N, 1, S0, S1, S2)
  fill_crops_cpu(volume, centers_irc, args, out);
  return out;
}

}  // namespace lunakit::ops::detail

TORCH_LIBRARY_IMPL(lunakit, CPU, m) {
  m.impl("extract_crops", &lunakit::ops::detail::extract_crops_cpu);
  m.impl("extract_crops_into", &lunakit::ops::detail::extract_crops_into_cpu);
}
