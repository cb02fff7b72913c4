// Output paths checked before any work (finding.h, check_output_file; docs/design.md, "Errors").
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

#include "lunakit/error.h"
#include "lunakit/finding.h"

namespace lunakit {

namespace fs = std::filesystem;

void check_output_file(const std::string& option, const std::string& path) {
  const std::string what = option + " " + path + ": ";
  std::error_code ec;
  if (path.empty()) throw Error(option + ": an empty path");
  if (fs::is_directory(path, ec)) throw Error(what + "is a folder, not a file");
  // The deepest folder that exists: write_files_atomically creates the missing ones below it.
  fs::path existing = fs::path(path).parent_path();
  if (existing.empty()) existing = ".";
  while (!fs::exists(existing, ec) && existing.has_parent_path() && existing.parent_path() != existing) {
    existing = existing.parent_path();
  }
  if (!fs::is_directory(existing, ec)) throw Error(what + existing.string() + " is a file, not a folder");
  // Root writes where permissions say no; a probe file tells what the file system allows.
  std::string probe = (existing / ".lunakit-probe-XXXXXX").string();
  const int fd = ::mkstemp(probe.data());
  if (fd < 0) throw Error(what + "cannot write in " + existing.string() + " (" + std::strerror(errno) + ")");
  ::close(fd);
  ::unlink(probe.c_str());
}

}  // namespace lunakit
