// luna_infer: analyze CT scans without Python.
//
//   luna_infer analyze --bundle B --input SCAN --output findings.json [--csv findings.csv]
//                      [--dicom-out DIR] [--device cpu|cuda[:N]] [--threads N] [--series-uid UID] [--quiet] [--timings]
//                      [--precision fp32|bf16|auto]
//   luna_infer segment --bundle B --input SCAN --output prob.mhd [--first I] [--count N]
//                      [--device cpu|cuda[:N]] [--threads N] [--series-uid UID]
//   luna_infer info SCAN [--series-uid UID] [--voxel-sha256]
//   luna_infer --version | --help | SUBCOMMAND --help
//
// SCAN is a .mhd/.mha file (lunakit's own reader) or a DICOM series folder (GDCM). Progress
// goes to stderr, results to files, written only when the whole analysis succeeded (temporary
// files renamed into place). --dicom-out DIR (a DICOM SCAN only) adds DIR/findings-sr.dcm, a TID
// 1500 SR of the findings (docs/pacs.md). Exit status: 0 success, 2 bad input (one line on stderr), 1 internal.
// The command line is parsed with CLI11; its errors, too, become that one line.
// --timings adds one JSON line to stderr when the analysis succeeded: wall seconds per stage,
//   {"luna_infer_timings": {"load_bundle_s", "read_scan_s", "segment_s", "group_s" (erode + label +
//    component stats), "classify_s" (crops + classifiers), "write_s", "total_s"}, "candidates": K}
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "lunakit/analyzer.h"
#include "lunakit/bundle.h"
#include "lunakit/dicom_sr.h"
#include "lunakit/error.h"
#include "lunakit/finding.h"
#include "lunakit/metaimage.h"
#include "lunakit/scan.h"
#include "lunakit/version.h"

namespace {

namespace fs = std::filesystem;

const char* kUsage =
    "usage: luna_infer analyze --bundle B --input SCAN --output findings.json [--csv findings.csv]\n"
    "                          [--dicom-out DIR] [--device cpu|cuda[:N]] [--threads N] [--series-uid UID] [--quiet] "
    "[--timings]\n"
    "                          [--precision fp32|bf16|auto]\n"
    "       luna_infer segment --bundle B --input SCAN --output prob.mhd [--first I] [--count N]\n"
    "                          [--device cpu|cuda[:N]] [--threads N] [--series-uid UID]\n"
    "       luna_infer info SCAN [--series-uid UID] [--voxel-sha256]\n"
    "       luna_infer --version | --help | SUBCOMMAND --help\n"
    "SCAN: a .mhd/.mha file or a DICOM series folder. Exit status: 0 ok, 2 bad input, 1 internal error.\n";

// luna_infer with nothing to do (no arguments): the synopsis on stderr, exit 2.
int usage() {
  std::fputs(kUsage, stderr);
  return 2;
}

// A JSON string literal.
std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (const char ch : text) {
    const unsigned char u = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (u < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", u);
      out += escaped;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

// A JSON number with full double precision (null where JSON has no number: NaN, infinities).
std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  char text[40];
  std::snprintf(text, sizeof text, "%.17g", value);
  return text;
}

std::string json_vec3(const lunakit::Vec3& v) {
  return "[" + json_number(v[0]) + ", " + json_number(v[1]) + ", " + json_number(v[2]) + "]";
}

// The command line's values, as CLI11 fills them (main); each subcommand reads its own.
struct Request {
  std::string bundle, input, output, csv, dicom_out, device = "cpu", series_uid;
  std::string precision;         // empty: the bundle's (fp32 unless it says otherwise)
  bool precision_given = false;  // --precision given (so an empty value is refused, not the default)
  int threads = 0;               // 0: torch's default
  long long first = 0;
  long long count = 0;  // 0: to the end of the scan
  bool quiet = false, timings = false, voxel_sha256 = false;
};

// `info SCAN`: size, geometry and HU range of a scan, as one JSON object on stdout. It loads the scan
// as `analyze` does (int16 HU, the same refusals as `lunakit info`).
int info(const Request& request) {
  const lunakit::Scan scan = lunakit::load_scan(request.input, request.series_uid);
  const lunakit::Volume& volume = scan.volume;
  const lunakit::Geometry& g = volume.geometry;
  const lunakit::Mat3& d = g.direction();
  const double hu_min = volume.voxels.min().item<double>();
  const double hu_max = volume.voxels.max().item<double>();
  const char* dtype = volume.voxels.scalar_type() == torch::kInt16 ? "int16" : "float32";
  std::string json = "{";
  json += "\"size_irc\": [" + std::to_string(volume.slices()) + ", " + std::to_string(volume.rows()) + ", " +
          std::to_string(volume.cols()) + "], ";
  json += "\"spacing_xyz\": " + json_vec3(g.spacing_xyz()) + ", ";
  json += "\"origin_xyz\": " + json_vec3(g.origin_xyz()) + ", ";
  json += "\"direction\": [" + json_vec3({d[0], d[1], d[2]}) + ", " + json_vec3({d[3], d[4], d[5]}) + ", " +
          json_vec3({d[6], d[7], d[8]}) + "], ";
  json += "\"series_uid\": " + json_string(scan.series_uid) + ", ";
  json += "\"hu_min\": " + json_number(hu_min) + ", ";
  json += "\"hu_max\": " + json_number(hu_max) + ", ";
  json += "\"dtype\": " + json_string(dtype);
  if (request.voxel_sha256) {
    // Of the voxels' bytes in [I, R, C] order (little-endian), to compare with other readers.
    const torch::Tensor voxels = volume.voxels.contiguous();
    json += ", \"voxel_sha256\": " +
            json_string(lunakit::sha256_hex(voxels.data_ptr(), static_cast<size_t>(voxels.nbytes())));
  }
  json += "}";
  std::printf("%s\n", json.c_str());
  return 0;
}

// Prints "<stage> done/total" lines to stderr at every 10% of a stage.
class StderrProgress {
 public:
  explicit StderrProgress(bool enabled) : enabled_(enabled), start_(std::chrono::steady_clock::now()) {}

  void operator()(const std::string& stage, int64_t done, int64_t total) {
    if (!enabled_) return;
    const int64_t tenth = total > 0 ? (10 * done) / total : 10;
    if (stage == stage_ && tenth == tenth_ && done < total) return;
    stage_ = stage;
    tenth_ = tenth;
    std::fprintf(stderr, "luna_infer: %-9s %lld/%lld (%.1f s)\n", stage.c_str(), static_cast<long long>(done),
                 static_cast<long long>(total), seconds());
  }

  void note(const std::string& text) {
    if (enabled_) std::fprintf(stderr, "luna_infer: %s (%.1f s)\n", text.c_str(), seconds());
  }

  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

 private:
  bool enabled_;
  std::chrono::steady_clock::time_point start_;
  std::string stage_;
  int64_t tenth_ = -1;
};

// Wall time at the end of each stage, for --timings (stages end when their progress reaches total).
class StageClock {
 public:
  StageClock() : start_(std::chrono::steady_clock::now()), last_(start_) {}

  // Seconds since the previous mark, recorded under `stage`.
  void mark(const std::string& stage) {
    const auto now = std::chrono::steady_clock::now();
    seconds_.emplace_back(stage, std::chrono::duration<double>(now - last_).count());
    last_ = now;
  }

  // The progress callback's view: a stage ends when done reaches total.
  void progress(const std::string& stage, int64_t done, int64_t total) {
    if (done >= total) mark(stage + "_s");
  }

  std::string json(size_t candidates) const {
    std::string out = "{\"luna_infer_timings\": {";
    for (const auto& [stage, seconds] : seconds_) out += json_string(stage) + ": " + json_number(seconds) + ", ";
    out += "\"total_s\": " + json_number(std::chrono::duration<double>(last_ - start_).count());
    return out + "}, \"candidates\": " + std::to_string(candidates) + "}";
  }

 private:
  std::chrono::steady_clock::time_point start_, last_;
  std::vector<std::pair<std::string, double>> seconds_;
};

// Keeps freed memory in the process for reuse instead of giving it back to the kernel. glibc serves
// every block over its mmap threshold (at most 32 MiB: each U-Net and classifier activation of a
// batch) with a fresh mmap and unmaps it on free, so the kernel zeroes every page again on first
// touch; on the 2-core benchmark machine that was 40% of luna_infer's CPU time (system time) and
// made segmentation 2x and classification 1.6x slower (docs/pipeline.md, Benchmarks). One process
// analyzes one scan, so what is kept is the analysis's own peak. A user's GLIBC_TUNABLES wins.
void keep_freed_memory() {
#if defined(__GLIBC__)
  if (std::getenv("GLIBC_TUNABLES") != nullptr) return;
  mallopt(M_MMAP_MAX, 0);              // large blocks from the heap, reused after free
  mallopt(M_TRIM_THRESHOLD, 1 << 30);  // keep up to 1 GiB of free heap top
  mallopt(M_TOP_PAD, 64 << 20);        // grow the heap in 64 MiB steps
#endif
}

// The options analyze and segment share: bundle, device and threads -> a ready Analyzer.
lunakit::Analyzer make_analyzer(const Request& request, const lunakit::Bundle& bundle) {
  lunakit::AnalyzerOptions run;
  run.device = request.device;
  run.threads = request.threads;
  run.precision = request.precision;
  if (request.precision_given && request.precision.empty()) {  // not "the bundle's": refused as the Analyzer refuses
    throw lunakit::Error("--precision : must be 'fp32', 'bf16' or 'auto'");
  }
  // Refuses an unavailable device before the scan is read.
  try {
    return lunakit::Analyzer(bundle, run);
  } catch (const lunakit::Error& e) {
    throw lunakit::Error(std::string("--") + e.what());  // "--device cuda: no CUDA GPU ..."
  }
}

// `segment`: the U-Net's probability map of a scan (or of slices first..first+count-1) as a
// float32 MetaImage whose geometry places it in the scan, for inspecting the segmenter.
int segment(const Request& request) {
  const std::string& output = request.output;
  if (fs::path(output).extension() != ".mhd") throw lunakit::Error("--output " + output + ": must end in .mhd");
  lunakit::check_output_file("--output", output);
  lunakit::check_output_file("--output", fs::path(output).replace_extension(".raw").string());
  const long long first = request.first;
  const lunakit::Bundle bundle = lunakit::Bundle::load(request.bundle);
  const lunakit::Analyzer analyzer = make_analyzer(request, bundle);
  const lunakit::Scan scan = lunakit::load_scan(request.input, request.series_uid);
  const int64_t slices = scan.volume.slices();
  const long long count = request.count > 0 ? request.count : std::max<long long>(slices - first, 1);
  lunakit::Volume probability;
  try {
    probability.voxels = analyzer.probability(scan.volume, first, count);
  } catch (const lunakit::Error& e) {
    throw lunakit::Error(scan.source + ": " + e.what());
  }
  const lunakit::Geometry& g = scan.volume.geometry;
  probability.geometry =
      lunakit::Geometry(g.irc_to_xyz({static_cast<double>(first), 0.0, 0.0}), g.spacing_xyz(), g.direction());
  lunakit::write_metaimage(output, probability);
  std::printf("probability of slices %lld..%lld in %s\n", first, first + count - 1, output.c_str());
  return 0;
}

// `analyze`: one scan in, findings.json (+ CSV) out.
int analyze(const Request& request) {
  const std::string& output = request.output;
  const std::string& csv = request.csv;
  lunakit::check_output_file("--output", output);
  if (!csv.empty()) lunakit::check_output_file("--csv", csv);
  StderrProgress progress(!request.quiet);
  StageClock clock;
  std::error_code ec;
  if (!request.dicom_out.empty() && fs::exists(request.input, ec) && !fs::is_directory(request.input, ec)) {
    throw lunakit::Error(request.input +
                         ": DICOM results (--dicom-out) need a DICOM series folder as input; this scan is a "
                         "file (docs/pacs.md)");
  }

  const lunakit::Bundle bundle = lunakit::Bundle::load(request.bundle);
  const lunakit::Analyzer analyzer = make_analyzer(request, bundle);
  clock.mark("load_bundle_s");
  progress.note("bundle " + bundle.dir() + " loaded, device " + analyzer.device());
  const lunakit::Scan scan = lunakit::load_scan(request.input, request.series_uid);
  clock.mark("read_scan_s");
  progress.note("scan " + scan.source + " read: " + std::to_string(scan.volume.slices()) + " x " +
                std::to_string(scan.volume.rows()) + " x " + std::to_string(scan.volume.cols()) + " voxels");
  std::vector<lunakit::Finding> findings;
  try {
    findings = analyzer.analyze(scan.volume, [&](const std::string& stage, int64_t done, int64_t total) {
      progress(stage, done, total);
      clock.progress(stage, done, total);
    });
  } catch (const lunakit::Error& e) {
    throw lunakit::Error(scan.source + ": " + e.what());
  }

  lunakit::FindingsDocument document = lunakit::FindingsDocument::from_bundle(bundle, scan.series_uid, scan.source);
  document.size_irc = {scan.volume.slices(), scan.volume.rows(), scan.volume.cols()};
  document.geometry = scan.volume.geometry;
  document.options.precision = analyzer.options().precision;  // the one that ran: fp32 or bf16
  std::vector<std::pair<std::string, std::string>> files{{output, lunakit::findings_json(document, findings)}};
  if (!csv.empty()) files.emplace_back(csv, lunakit::findings_csv(scan.series_uid, findings));
  if (!request.dicom_out.empty()) {
    const std::string sr = lunakit::findings_sr(scan.dicom_files, document, findings);  // before anything is written
    fs::create_directories(request.dicom_out, ec);
    if (ec) throw lunakit::Error("--dicom-out " + request.dicom_out + ": cannot create (" + ec.message() + ")");
    files.emplace_back((fs::path(request.dicom_out) / lunakit::kFindingsSrFile).string(), sr);
  }
  lunakit::write_files_atomically(files);
  clock.mark("write_s");

  const double threshold = analyzer.options().nodule_threshold;
  size_t above = 0;
  for (const lunakit::Finding& f : findings) above += f.p_nodule > threshold ? 1 : 0;
  std::printf("%zu candidates, %zu above p_nodule %g; findings in %s%s (%.1f s)\n", findings.size(), above, threshold,
              output.c_str(), csv.empty() ? "" : (" and " + csv).c_str(), progress.seconds());
  if (request.timings) std::fprintf(stderr, "%s\n", clock.json(findings.size()).c_str());
  return 0;
}

// --- Command line (CLI11) --------------------------------------------------------------------

// A CLI11 check: an integer in [lo, hi]. CLI11 puts the option's name before the message
// ("--count: expected an integer in 1..2147483647, got '0'"). The accepted text is rewritten in
// base 10 because CLI11's own conversion, which runs next, would read "010" as octal.
CLI::Validator integer_in(long long lo, long long hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        char* end = nullptr;
        errno = 0;
        const long long n = std::strtoll(text.c_str(), &end, 10);
        if (text.empty() || *end != '\0' || errno != 0 || n < lo || n > hi) {
          return "expected an integer in " + std::to_string(lo) + ".." + std::to_string(hi) + ", got '" + text + "'";
        }
        text = std::to_string(n);
        return "";
      },
      "");
}

// What a command-line error ends with: the (sub)command's shape and where its options are listed.
std::string usage_hint(const std::string& command) {
  std::string shape = "luna_infer analyze|segment|info ... | --version";
  if (command == "analyze") shape = "luna_infer analyze --bundle B --input SCAN --output F [options]";
  if (command == "segment") shape = "luna_infer segment --bundle B --input SCAN --output prob.mhd [options]";
  if (command == "info") shape = "luna_infer info SCAN [options]";
  return " (usage: " + shape + "; see luna_infer " + (command.empty() ? "" : command + " ") + "--help)";
}

// A command-line error as lunakit::Error, the one line main prints: "analyze: --output is required (usage: ...)".
lunakit::Error command_line_error(const CLI::App& app, const std::string& message) {
  const auto chosen = app.get_subcommands();
  const std::string command = chosen.empty() ? "" : chosen[0]->get_name();
  return lunakit::Error((command.empty() ? "" : command + ": ") + message + usage_hint(command));
}

// Every app keeps what it could not parse (allow_extras), so that it is refused here, in one
// line naming the first such argument, instead of in CLI11's words.
void refuse_leftovers(const CLI::App& app) {
  std::vector<const CLI::App*> apps{&app};
  for (const CLI::App* sub : app.get_subcommands()) apps.push_back(sub);
  for (const CLI::App* each : apps) {
    const std::vector<std::string> left = each->remaining();
    if (left.empty()) continue;
    const std::string& arg = left.front();
    if (arg.rfind('-', 0) == 0) throw command_line_error(app, "unknown option " + arg);
    throw command_line_error(app, (each == &app ? "unknown command '" : "unexpected argument '") + arg + "'");
  }
}

// The options analyze and segment share (--output: what each writes).
void add_run_options(CLI::App& command, Request& request, const std::string& output_name,
                     const std::string& output_help) {
  command.add_option("--bundle", request.bundle, "bundle folder (manifest.json and the models)")
      ->type_name("B")
      ->required();
  command.add_option("--input", request.input, "the scan: a .mhd/.mha file or a DICOM series folder")
      ->type_name("SCAN")
      ->required();
  command.add_option("--output", request.output, output_help)->type_name(output_name)->required();
  command.add_option("--device", request.device, "cpu (default), cuda or cuda:N")->type_name("D");
  command.add_option("--threads", request.threads, "torch's intra-op threads, 1..4096 (default: torch's choice)")
      ->type_name("N")
      ->check(integer_in(1, 4096));
  command.add_option("--series-uid", request.series_uid, "the series to read from a DICOM folder")->type_name("UID");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  Request request;
  bool version = false;
  CLI::App app("luna_infer: analyze CT scans without Python", "luna_infer");
  app.footer(
      "SCAN: a .mhd/.mha file or a DICOM series folder.\n"
      "Exit status: 0 ok, 2 bad input (one line on stderr), 1 internal error.");
  app.require_subcommand(0, 1);
  app.allow_extras();
  app.add_flag("--version", version, "print the version and exit");

  CLI::App* analyze_command = app.add_subcommand("analyze", "one scan in, findings.json (+ CSV) out");
  analyze_command->allow_extras();
  add_run_options(*analyze_command, request, "F", "findings.json to write");
  analyze_command->add_option("--csv", request.csv, "also write the findings as LUNA16 CSV")->type_name("F");
  analyze_command->add_option("--dicom-out", request.dicom_out, "also write DIR/findings-sr.dcm (DICOM SCAN only)")
      ->type_name("DIR");
  analyze_command->add_flag("--quiet", request.quiet, "no progress lines on stderr");
  analyze_command->add_flag("--timings", request.timings, "one JSON line of per-stage seconds on stderr");
  CLI::Option* precision_option =
      analyze_command
          ->add_option("--precision", request.precision,
                       "fp32 (exact, the default), bf16 (fast: bf16 with fp32 rechecks near the thresholds) or auto "
                       "(bf16 where the device has native bf16)")
          ->type_name("P");

  CLI::App* segment_command =
      app.add_subcommand("segment", "the U-Net's probability map of a scan (or of slices I..I+N-1) as a MetaImage");
  segment_command->allow_extras();
  add_run_options(*segment_command, request, "prob.mhd", "the map to write (float32 MetaImage, + prob.raw)");
  segment_command->add_option("--first", request.first, "first slice I (default 0)")
      ->type_name("I")
      ->check(integer_in(0, INT32_MAX));
  segment_command->add_option("--count", request.count, "number of slices N (default: to the end of the scan)")
      ->type_name("N")
      ->check(integer_in(1, INT32_MAX));

  CLI::App* info_command = app.add_subcommand("info", "size, geometry and HU range of a scan, as JSON on stdout");
  info_command->allow_extras();
  info_command->add_option("SCAN", request.input, "a .mhd/.mha file or a DICOM series folder")
      ->type_name("")
      ->required();
  info_command->add_option("--series-uid", request.series_uid, "the series to read from a DICOM folder")
      ->type_name("UID");
  info_command->add_flag("--voxel-sha256", request.voxel_sha256, "add the sha256 of the voxels' bytes");

  try {
    try {
      app.parse(argc, argv);
    } catch (const CLI::CallForHelp&) {
      std::fputs(app.help().c_str(), stdout);  // the chosen subcommand's help, if any
      return 0;
    } catch (const CLI::ParseError& e) {
      throw command_line_error(app, e.what());
    }
    refuse_leftovers(app);
    request.precision_given = precision_option->count() > 0;
    if (version) {
      std::printf("luna_infer %s\n", lunakit::version());
      return 0;
    }
    if (info_command->parsed()) return info(request);
    if (analyze_command->parsed() || segment_command->parsed()) {
      keep_freed_memory();
      return analyze_command->parsed() ? analyze(request) : segment(request);
    }
    return usage();
  } catch (const lunakit::Error& e) {
    std::string message = e.what();
    for (char& ch : message) {
      if (ch == '\n' || ch == '\r') ch = ' ';
    }
    std::fprintf(stderr, "luna_infer: error: %s\n", message.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "luna_infer: internal error: %s\n", lunakit::first_line(e).c_str());
    return 1;
  }
}
