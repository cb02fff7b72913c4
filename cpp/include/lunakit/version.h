#pragma once
namespace lunakit {
// The lunakit version this library was built as, and whether it carries CUDA kernels.
const char* version();
bool built_with_cuda();
}  // namespace lunakit
