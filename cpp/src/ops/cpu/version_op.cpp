#include <torch/library.h>

#include "lunakit/version.h"

namespace {
std::string version_op() { return lunakit::version(); }
}  // namespace

TORCH_LIBRARY_IMPL(lunakit, CompositeExplicitAutograd, m) { m.impl("version", &version_op); }
