// libFuzzer target: the MetaImage header parser and reader (lunakit::read_metaimage) on any bytes,
// as a .mha (header and LOCAL data in one file) and as a .mhd whose data file is the same bytes.
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "lunakit/error.h"
#include "lunakit/metaimage.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = lunakit_fuzz::scratch_dir();
  for (const char* name : {"/scan.mha", "/scan.mhd"}) {
    const std::string path = dir + name;
    lunakit_fuzz::write_file(path, data, size);
    lunakit_fuzz::write_file(dir + "/scan.raw", data, size);  // what ElementDataFile = scan.raw finds
    try {
      lunakit::read_metaimage(path);
    } catch (const lunakit::Error&) {
    }
  }
  return 0;
}
