// luna_infer: analyze CT scans without Python.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "lunakit/error.h"
#include "lunakit/version.h"

namespace {
int usage() {
  std::fprintf(stderr, "usage: luna_infer info SCAN.mhd\n       luna_infer --version\n");
  return 2;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  const std::string command = argv[1];
  try {
    if (command == "--version") {
      std::printf("luna_infer %s\n", lunakit::version());
      return 0;
    }
    return usage();
  } catch (const lunakit::Error& e) {
    std::fprintf(stderr, "luna_infer: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "luna_infer: internal error: %s\n", e.what());
    return 1;
  }
}
