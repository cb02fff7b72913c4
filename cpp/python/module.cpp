// lunakit._core: loads lunakit_core (and with it the torch.ops.lunakit registrations) into
// Python. Tensors cross through torch.ops.lunakit.*; this module carries non-tensor things.
#include <pybind11/pybind11.h>

#include "lunakit/version.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "lunakit C++ core (op library loader and runtime metadata)";
  m.attr("__version__") = lunakit::version();
  m.def("built_with_cuda", &lunakit::built_with_cuda, "Whether the op library carries CUDA kernels.");
}
