// libFuzzer target: the findings writers round trip. Findings and a document built from the input
// go through findings_json and findings_csv; the JSON must parse (nlohmann) and give back every
// value exactly, and the CSV must parse (RFC 4180 quoting) and give back the series UID and each
// coordinate and probability exactly (Python's float repr is the shortest that round-trips).
#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lunakit/finding.h"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

double finite(FuzzedDataProvider& in) {
  const double v = in.ConsumeFloatingPoint<double>();
  return std::isfinite(v) ? v : 0.0;
}

// The CSV's records, each a list of fields (quoted fields may hold commas, quotes and newlines).
std::vector<std::vector<std::string>> parse_csv(const std::string& text) {
  std::vector<std::vector<std::string>> rows(1, std::vector<std::string>(1));
  bool quoted = false;
  for (size_t k = 0; k < text.size(); ++k) {
    const char ch = text[k];
    if (quoted) {
      if (ch == '"' && k + 1 < text.size() && text[k + 1] == '"')
        rows.back().back() += '"', ++k;
      else if (ch == '"')
        quoted = false;
      else
        rows.back().back() += ch;
    } else if (ch == '"') {
      quoted = true;
    } else if (ch == ',') {
      rows.back().emplace_back();
    } else if (ch == '\r' && k + 1 < text.size() && text[k + 1] == '\n') {
      rows.emplace_back(1);
      ++k;
    } else {
      rows.back().back() += ch;
    }
  }
  if (rows.back().size() == 1 && rows.back()[0].empty()) rows.pop_back();  // after the last \r\n
  return rows;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  lunakit::FindingsDocument doc;
  doc.series_uid = in.ConsumeRandomLengthString(64);
  doc.source = in.ConsumeRandomLengthString(64);
  std::vector<lunakit::Finding> findings(in.ConsumeIntegralInRange<size_t>(0, 8));
  for (lunakit::Finding& f : findings) {
    for (int k = 0; k < 3; ++k) f.center_xyz[k] = finite(in), f.center_irc[k] = finite(in);
    f.voxel_count = in.ConsumeIntegral<int64_t>();
    f.diameter_mm = finite(in);
    f.p_nodule = finite(in);
    if (in.ConsumeBool()) f.p_malignant = finite(in);
  }

  const nlohmann::json json = nlohmann::json::parse(lunakit::findings_json(doc, findings));  // throws: a finding
  check(json["findings"].size() == findings.size());
  for (size_t n = 0; n < findings.size(); ++n) {
    const nlohmann::json& record = json["findings"][n];
    for (int k = 0; k < 3; ++k) {
      check(record["center_xyz"][k].get<double>() == findings[n].center_xyz[k]);
      check(record["center_irc"][k].get<double>() == findings[n].center_irc[k]);
    }
    check(record["voxel_count"].get<int64_t>() == findings[n].voxel_count);
    check(record["p_nodule"].get<double>() == findings[n].p_nodule);
    check(record["p_malignant"].is_null() == !findings[n].p_malignant.has_value());
    if (findings[n].p_malignant) check(record["p_malignant"].get<double>() == *findings[n].p_malignant);
  }

  const auto rows = parse_csv(lunakit::findings_csv(doc.series_uid, findings));
  check(rows.size() == findings.size() + 1);
  for (size_t n = 0; n < findings.size(); ++n) {
    const std::vector<std::string>& row = rows[n + 1];
    check(row.size() == 5 && row[0] == doc.series_uid);
    for (int k = 0; k < 3; ++k) check(std::strtod(row[1 + k].c_str(), nullptr) == findings[n].center_xyz[k]);
    check(std::strtod(row[4].c_str(), nullptr) == findings[n].p_nodule);
  }
  return 0;
}
