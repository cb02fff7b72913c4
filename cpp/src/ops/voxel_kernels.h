#pragma once
// Per-voxel pieces of the lunakit kernels, written once for the host and the device.
//
// The CUDA kernels (ops/cuda/*.cu) call these one thread per voxel; the CPU ops call the
// crop and erosion ones directly, and the C++ tests run the CUDA labeling steps on the host
// in shuffled voxel orders (a "CPU twin" of the GPU algorithm) to check that its result
// does not depend on the thread schedule. No torch types here: plain pointers and sizes.
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define LUNAKIT_HD __host__ __device__ __forceinline__
#else
#define LUNAKIT_HD inline
#endif

namespace lunakit::ops::detail {

// A volume's extents, [I, R, C], C fastest.
struct Dims {
  int64_t i, r, c;
  LUNAKIT_HD int64_t numel() const { return i * r * c; }
};

// ---- crops ----------------------------------------------------------------------------

// First index of a crop of `size` voxels around `center` along an axis of `extent` voxels.
// start = round(center - size / 2), half to even (nearbyint under the default rounding mode).
// shift: moved inside [0, extent) (extent >= size is checked by the caller); pad: kept, but
// clamped far outside the volume so that absurd centers cannot overflow int64.
LUNAKIT_HD int64_t crop_start(double center, int64_t size, int64_t extent, bool shift) {
  double start = nearbyint(center - static_cast<double>(size) / 2.0);
  const double lo = -static_cast<double>(size), hi = static_cast<double>(extent);
  start = start < lo ? lo : (start > hi ? hi : start);
  int64_t s = static_cast<int64_t>(start);
  if (shift) {
    if (s < 0) s = 0;
    if (s + size > extent) s = extent - size;
  }
  return s;
}

LUNAKIT_HD float clip_value(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

// ---- erosion --------------------------------------------------------------------------

// One voxel of binary erosion by the 6-connected cross; outside the volume is background.
LUNAKIT_HD bool erode_voxel(const bool* mask, Dims d, int64_t i, int64_t r, int64_t c) {
  if (i <= 0 || r <= 0 || c <= 0 || i >= d.i - 1 || r >= d.r - 1 || c >= d.c - 1) return false;
  const int64_t idx = (i * d.r + r) * d.c + c;
  const int64_t si = d.r * d.c;
  return mask[idx] && mask[idx - 1] && mask[idx + 1] && mask[idx - d.c] && mask[idx + d.c] && mask[idx - si] &&
         mask[idx + si];
}

// ---- connected components: union-find with the smallest linear index as root -----------

// The neighbors of a voxel that come before it in raster order ("backward half") for each
// connectivity (6: faces, 18: + edges, 26: + corners), as (di, dr, dc); the first 3, 9 or 13.
struct Offset {
  int8_t di, dr, dc;
};
// Faces first, then edges, then corners, so that connectivity k uses a prefix.
constexpr int kBackwardCount6 = 3, kBackwardCount18 = 9, kBackwardCount26 = 13;
LUNAKIT_HD Offset backward_offset(int k) {
  // Faces (6).
  if (k == 0) return {-1, 0, 0};
  if (k == 1) return {0, -1, 0};
  if (k == 2) return {0, 0, -1};
  // Edges (18).
  if (k == 3) return {-1, -1, 0};
  if (k == 4) return {-1, 1, 0};
  if (k == 5) return {-1, 0, -1};
  if (k == 6) return {-1, 0, 1};
  if (k == 7) return {0, -1, -1};
  if (k == 8) return {0, -1, 1};
  // Corners (26).
  if (k == 9) return {-1, -1, -1};
  if (k == 10) return {-1, -1, 1};
  if (k == 11) return {-1, 1, -1};
  return {-1, 1, 1};
}

LUNAKIT_HD int backward_count(int connectivity) {
  return connectivity == 6 ? kBackwardCount6 : (connectivity == 18 ? kBackwardCount18 : kBackwardCount26);
}

// atomicMin on the device; a plain min on the host (the host twin runs one voxel at a time).
LUNAKIT_HD int32_t atomic_min_i32(int32_t* p, int32_t v) {
#if defined(__CUDA_ARCH__)
  return atomicMin(reinterpret_cast<int*>(p), static_cast<int>(v));
#else
  const int32_t old = *p;
  if (v < old) *p = v;
  return old;
#endif
}

// Root of x: follow parents until a voxel is its own parent. Reads go through volatile so
// that the device re-reads links other threads hook concurrently.
LUNAKIT_HD int32_t uf_find(const int32_t* parent, int32_t x) {
  const volatile int32_t* p = parent;
  int32_t next = p[x];
  while (next != x) {
    x = next;
    next = p[x];
  }
  return x;
}

// Join the sets of a and b: hook the larger root under the smaller with atomicMin, retrying
// when another thread re-hooked that root first. Links only ever decrease, so each
// component ends with its smallest linear index as root, whatever the order of the unions.
LUNAKIT_HD void uf_unite(int32_t* parent, int32_t a, int32_t b) {
  while (true) {
    a = uf_find(parent, a);
    b = uf_find(parent, b);
    if (a == b) return;
    if (a > b) {
      const int32_t t = a;
      a = b;
      b = t;
    }
    // Now a < b: hook root b under a, unless b is no longer a root.
    const int32_t old = atomic_min_i32(parent + b, a);
    if (old == b) return;
    b = old;  // b was hooked meanwhile under old: unite a with that instead.
  }
}

// Step 1: every foreground voxel is its own set (parent = own index), background is -1.
LUNAKIT_HD void label_init_voxel(const bool* mask, int32_t* parent, int64_t idx) {
  parent[idx] = mask[idx] ? static_cast<int32_t>(idx) : -1;
}

// Step 2: unite a foreground voxel with each foreground backward neighbor.
LUNAKIT_HD void label_merge_voxel(const bool* mask, int32_t* parent, Dims d, int connectivity, int64_t i, int64_t r,
                                  int64_t c) {
  const int64_t idx = (i * d.r + r) * d.c + c;
  if (!mask[idx]) return;
  const int n = backward_count(connectivity);
  for (int k = 0; k < n; ++k) {
    const Offset o = backward_offset(k);
    const int64_t ni = i + o.di, nr = r + o.dr, nc = c + o.dc;
    if (ni < 0 || nr < 0 || nc < 0 || nr >= d.r || nc >= d.c) continue;  // ni <= i < d.i
    const int64_t nidx = (ni * d.r + nr) * d.c + nc;
    if (mask[nidx]) uf_unite(parent, static_cast<int32_t>(idx), static_cast<int32_t>(nidx));
  }
}

// Step 3 (after all merges): point every foreground voxel straight at its root.
LUNAKIT_HD void label_flatten_voxel(int32_t* parent, int64_t idx) {
  const int32_t p = parent[idx];
  if (p >= 0) parent[idx] = uf_find(parent, static_cast<int32_t>(idx));
}

// Step 4: 1 where a voxel is a root. Roots in increasing linear index are the components'
// first voxels in raster order, so an inclusive prefix sum of these flags gives each root
// its scipy label.
LUNAKIT_HD int32_t label_root_flag(const int32_t* parent, int64_t idx) {
  return parent[idx] == static_cast<int32_t>(idx) ? 1 : 0;
}

// Step 5: final label of a voxel from its root's rank (inclusive prefix sum of root flags).
// Each voxel reads only its own parent entry, so labels may overwrite parent in place.
LUNAKIT_HD int32_t label_final_voxel(const int32_t* parent, const int32_t* root_rank, int64_t idx) {
  const int32_t p = parent[idx];
  return p >= 0 ? root_rank[p] : 0;
}

}  // namespace lunakit::ops::detail
