#pragma once
// Shared by the libFuzzer targets (docs/fuzzing.md): the readers take paths, so each input is
// written to a file in a private scratch folder first; a lunakit::Error is the expected answer
// to bad input, anything else (a crash, a sanitizer report, another exception) is a finding.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace lunakit_fuzz {

// A folder of this process's own under $TMPDIR, else /dev/shm (memory: several times faster
// than a disk for a file per execution), else /tmp; made once.
inline const std::string& scratch_dir() {
  static const std::string* dir = [] {  // never destroyed: the exit handler below still reads it
    const char* env = std::getenv("TMPDIR");
    struct stat shm{};
    const std::string base = env && *env ? env : (::stat("/dev/shm", &shm) == 0 ? "/dev/shm" : "/tmp");
    auto* path = new std::string(base + "/lunakit-fuzz-XXXXXX");
    if (::mkdtemp(path->data()) == nullptr) std::abort();
    std::atexit([] { std::filesystem::remove_all(scratch_dir()); });
    return path;
  }();
  return *dir;
}

inline void write_file(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) std::abort();
}

}  // namespace lunakit_fuzz
