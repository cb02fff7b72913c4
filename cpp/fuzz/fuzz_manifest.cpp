// libFuzzer target: the bundle manifest parser (lunakit::read_manifest and
// PipelineOptions::from_json) on any bytes, in a bundle folder that holds a small seg.pt and
// cls.pt, so that entries naming them reach the checksum and options checks.
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "lunakit/bundle.h"
#include "lunakit/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = lunakit_fuzz::scratch_dir() + "/bundle";
  static const bool made = [&] {
    ::mkdir(dir.c_str(), 0700);
    const uint8_t model[] = "not a model";
    lunakit_fuzz::write_file(dir + "/seg.pt", model, sizeof model - 1);
    lunakit_fuzz::write_file(dir + "/cls.pt", model, sizeof model - 1);
    return true;
  }();
  (void)made;
  lunakit_fuzz::write_file(dir + "/manifest.json", data, size);
  try {
    lunakit::read_manifest(dir);
  } catch (const lunakit::Error&) {
  }
  try {
    const lunakit::PipelineOptions options =
        lunakit::PipelineOptions::from_json(std::string(reinterpret_cast<const char*>(data), size));
    // What was accepted must read back to itself.
    if (lunakit::PipelineOptions::from_json(options.to_json()).to_json() != options.to_json()) __builtin_trap();
  } catch (const lunakit::Error&) {
  }
  return 0;
}
