// findings.json / findings.csv text and the all-or-nothing file writer
// (python/lunakit/io/findings.py's document and CSV, from C++).
#include <sys/stat.h>
#include <unistd.h>
#include <csignal>

#include <torch/version.h>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "lunakit/error.h"
#include "lunakit/finding.h"
#include "lunakit/version.h"

namespace lunakit {

namespace fs = std::filesystem;
using ordered_json = nlohmann::ordered_json;

namespace {

ordered_json vec3(const Vec3& v) { return ordered_json::array({v[0], v[1], v[2]}); }

ordered_json finding_json(const Finding& f) {  // Finding.to_dict()
  ordered_json d;
  d["center_xyz"] = vec3(f.center_xyz);
  d["center_irc"] = vec3(f.center_irc);
  d["voxel_count"] = f.voxel_count;
  d["bbox_irc"] = ordered_json::array({ordered_json::array({f.bbox_min_irc[0], f.bbox_min_irc[1], f.bbox_min_irc[2]}),
                                       ordered_json::array({f.bbox_max_irc[0], f.bbox_max_irc[1], f.bbox_max_irc[2]})});
  d["diameter_mm"] = f.diameter_mm;
  d["p_nodule"] = f.p_nodule;
  d["p_malignant"] = f.p_malignant ? ordered_json(*f.p_malignant) : ordered_json(nullptr);
  return d;
}

// Python's repr(float): shortest round-trip digits, fixed notation for exponents -4..15,
// else d.ddde+XX; integral values keep ".0".
std::string python_float(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::scientific);
  std::string sci(buffer, result.ptr);  // e.g. "-1.2345e+02"
  const size_t e = sci.find('e');
  const int exponent = std::atoi(sci.c_str() + e + 1);
  std::string sign, digits;
  for (size_t k = 0; k < e; ++k) {
    if (sci[k] == '-')
      sign = "-";
    else if (sci[k] != '.')
      digits += sci[k];
  }
  if (exponent < -4 || exponent >= 16) {
    std::string out = sign + digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char exp_text[8];
    std::snprintf(exp_text, sizeof exp_text, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    return out + exp_text;
  }
  if (exponent < 0) return sign + "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
  const size_t int_digits = static_cast<size_t>(exponent) + 1;
  if (digits.size() <= int_digits) return sign + digits + std::string(int_digits - digits.size(), '0') + ".0";
  return sign + digits.substr(0, int_digits) + "." + digits.substr(int_digits);
}

std::string csv_field(const std::string& text) {  // csv.writer's minimal quoting
  if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
  std::string out = "\"";
  for (char ch : text) out += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return out + "\"";
}

mode_t current_umask() {
  const mode_t mask = ::umask(022);
  ::umask(mask);
  return mask;
}

}  // namespace

std::string findings_json(const FindingsDocument& doc, const std::vector<Finding>& findings) {
  const Mat3& d = doc.geometry.direction();
  ordered_json out;
  out["lunakit_version"] = version();
  out["torch_version"] = TORCH_VERSION;
  out["series_uid"] = doc.series_uid;
  out["source"] = doc.source;
  out["size_irc"] = ordered_json::array({doc.size_irc[0], doc.size_irc[1], doc.size_irc[2]});
  ordered_json geometry;
  geometry["origin_xyz"] = vec3(doc.geometry.origin_xyz());
  geometry["spacing_xyz"] = vec3(doc.geometry.spacing_xyz());
  geometry["direction"] =
      ordered_json::array({vec3({d[0], d[1], d[2]}), vec3({d[3], d[4], d[5]}), vec3({d[6], d[7], d[8]})});
  out["geometry"] = geometry;
  out["options"] = ordered_json::parse(doc.options.to_json());
  ordered_json checksums = ordered_json::object();
  for (const auto& [kind, sha] : doc.model_sha256) checksums[kind] = sha;  // std::map: sorted, as io/findings.py
  out["model_sha256"] = checksums;
  ordered_json list = ordered_json::array();
  for (const Finding& f : findings) list.push_back(finding_json(f));
  out["findings"] = list;
  // ensure_ascii=False is not Python's default; escape like json.dumps does.
  return out.dump(2, ' ', true, nlohmann::json::error_handler_t::replace) + "\n";
}

std::string findings_csv(const std::string& series_uid, const std::vector<Finding>& findings) {
  std::string out = "seriesuid,coordX,coordY,coordZ,probability\r\n";  // csv.writer ends rows with \r\n
  const std::string uid = csv_field(series_uid);
  for (const Finding& f : findings) {
    out += uid + "," + python_float(f.center_xyz[0]) + "," + python_float(f.center_xyz[1]) + "," +
           python_float(f.center_xyz[2]) + "," + python_float(f.p_nodule) + "\r\n";
  }
  return out;
}

void write_files_atomically(const std::vector<std::pair<std::string, std::string>>& path_and_text) {
  std::vector<std::string> temporaries;
  auto remove_temporaries = [&] {
    for (const std::string& tmp : temporaries) std::remove(tmp.c_str());
  };
  const mode_t mode = 0666 & ~current_umask();
  for (const auto& [path, text] : path_and_text) {
    const fs::path target(path);
    const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
    std::error_code ec;
    fs::create_directories(parent, ec);  // a failure shows in mkstemp's error below
    std::string pattern = (parent / ("." + target.filename().string() + ".XXXXXX")).string();
    const int fd = ::mkstemp(pattern.data());
    if (fd < 0) {
      const std::string reason = std::strerror(errno);
      remove_temporaries();
      throw Error(path + ": cannot write (" + reason + ")");
    }
    temporaries.push_back(pattern);
    size_t written = 0;
    while (written < text.size()) {
      const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      written += static_cast<size_t>(n);
    }
    const int write_errno = errno;
    const bool ok = written == text.size() && ::fchmod(fd, mode) == 0;
    if (::close(fd) != 0 || !ok) {
      remove_temporaries();
      throw Error(path + ": cannot write (" + std::strerror(ok ? errno : write_errno) + ")");
    }
  }
  if (const char* point = std::getenv("LUNAKIT_TEST_KILL_BEFORE_COMMIT");
      point && std::strcmp(point, "write_files") == 0) {
    ::kill(::getpid(), SIGKILL);  // tests only (io/files.py KILL_ENV): what an interruption leaves
  }
  for (size_t k = 0; k < path_and_text.size(); ++k) {
    if (std::rename(temporaries[k].c_str(), path_and_text[k].first.c_str()) != 0) {
      const std::string reason = std::strerror(errno);
      for (size_t j = k; j < temporaries.size(); ++j) std::remove(temporaries[j].c_str());
      throw Error(path_and_text[k].first + ": cannot write (" + reason + ")");
    }
  }
}

}  // namespace lunakit
