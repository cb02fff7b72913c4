#include "lunakit/version.h"

namespace lunakit {
const char* version() { return LUNAKIT_VERSION; }
bool built_with_cuda() {
#ifdef LUNAKIT_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace lunakit
