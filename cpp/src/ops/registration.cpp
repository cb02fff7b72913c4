// The lunakit op schemas, declared once; backends implement them in cpu/ and cuda/.
#include <torch/library.h>

TORCH_LIBRARY(lunakit, m) {
  m.def("version() -> str");
}
