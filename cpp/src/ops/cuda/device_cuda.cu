// The compute capability of a CUDA device, for lunakit::native_bf16 (analyzer.cpp), which is
// compiled without the CUDA headers.
#include <ATen/cuda/CUDAContext.h>

namespace lunakit::ops::cuda {

int compute_capability_major(int device_index) { return at::cuda::getDeviceProperties(device_index)->major; }

}  // namespace lunakit::ops::cuda
