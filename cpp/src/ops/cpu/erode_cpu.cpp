// binary_erode on the CPU: a voxel stays foreground when it and its 6 face neighbors are
// foreground; the volume's outer shell is always eroded (outside counts as background).
// Rows along C are ANDed as bytes, which the compiler vectorizes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#include "../ops.h"

namespace lunakit::ops::detail {

at::Tensor binary_erode_cpu(const at::Tensor& mask) {
  check_mask(mask, "binary_erode");
  TORCH_CHECK_VALUE(mask.device().is_cpu(), "binary_erode: expected a CPU tensor, got ", mask.device());
  const at::Tensor m = mask.contiguous();
  at::Tensor out = at::zeros(m.sizes(), m.options());  // (I, R, C) bool
  const int64_t ni = m.size(0), nr = m.size(1), nc = m.size(2);
  if (ni < 3 || nr < 3 || nc < 3) return out;  // every voxel touches the outside

  // bool is one byte holding 0 or 1, so & on bytes is logical and.
  const uint8_t* src = reinterpret_cast<const uint8_t*>(m.data_ptr<bool>());
  uint8_t* dst = reinterpret_cast<uint8_t*>(out.data_ptr<bool>());
  const int64_t slice = nr * nc;
  at::parallel_for(1, ni - 1, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t r = 1; r < nr - 1; ++r) {
        const int64_t row = (i * nr + r) * nc;
        const uint8_t* center = src + row;
        const uint8_t* up = center - nc;
        const uint8_t* down = center + nc;
        const uint8_t* before = center - slice;
        const uint8_t* after = center + slice;
        uint8_t* o = dst + row;
        for (int64_t c = 1; c < nc - 1; ++c) {
          o[c] = center[c] & center[c - 1] & center[c + 1] & up[c] & down[c] & before[c] & after[c];
        }
      }
    }
  });
  return out;
}

}  // namespace lunakit::ops::detail

TORCH_LIBRARY_IMPL(lunakit, CPU, m) { m.impl("binary_erode", &lunakit::ops::detail::binary_erode_cpu); }
