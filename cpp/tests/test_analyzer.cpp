// Bundle, Analyzer, findings files, SHA-256 and DICOM input, in C++.
//
// The bundles here hold tiny TorchScript models compiled from source in the test (no Python):
// the "U-Net" marks voxels above -500 HU in the centre channel, the classifier scores a crop by
// its mean HU. So every finding's expected value follows from the phantom by hand: components
// are cubes (eroded by one voxel), centers their middles, p_nodule sigmoid(5 (mean(crop) + 998.6)).
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "lunakit/analyzer.h"
#include "lunakit/bundle.h"
#include "lunakit/dicom.h"
#include "lunakit/error.h"
#include "lunakit/finding.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* kSegSource = R"(
def forward(self, x: Tensor) -> Tensor:
    return torch.sigmoid((x[:, 3:4] + 500.0) / 10.0)
)";

const char* kClsSource = R"(
def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
    m = x.mean(dim=[1, 2, 3, 4])
    logits = torch.stack([torch.zeros_like(m), (m + 998.6) * 5.0], dim=1)
    return logits, torch.softmax(logits, dim=1)
)";

// p_malignant = 1 - p_nodule
const char* kMalSource = R"(
def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
    m = x.mean(dim=[1, 2, 3, 4])
    logits = torch.stack([torch.zeros_like(m), -(m + 998.6) * 5.0], dim=1)
    return logits, torch.softmax(logits, dim=1)
)";

// A 5-channel convolution: refuses the 7-channel input of the pipeline.
const char* kFiveChannelSegSource = R"(
def forward(self, x: Tensor) -> Tensor:
    return torch.sigmoid(torch.conv2d(x, self.weight, padding=1))
)";

// Answers with one probability per crop instead of (logits, probabilities).
const char* kWrongClsSource = R"(
def forward(self, x: Tensor) -> Tensor:
    return x.mean(dim=[1, 2, 3, 4])
)";

fs::path temp_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("lunakit_test_" + name + "_" + std::to_string(::getpid()) + "_" +
                                                    std::to_string(std::random_device{}()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void save_module(const fs::path& path, const char* source, bool five_channel_weight = false) {
  torch::jit::Module module("m");
  if (five_channel_weight) module.register_parameter("weight", torch::zeros({1, 5, 3, 3}), false);
  module.define(source);
  module.save(path.string());
}

json default_manifest() {
  return json{{"format", "lunakit-bundle"}, {"format_version", 1},       {"lunakit_version", "test"},
              {"torch_version", "test"},    {"options", json::object()}, {"models", json::object()}};
}

// A bundle folder with seg / cls (/ mal) models from TorchScript source and the given options.
fs::path make_bundle(const std::string& name, const json& options = json::object(), bool with_mal = false,
                     const char* seg = kSegSource, const char* cls = kClsSource, bool five_channel = false) {
  const fs::path dir = temp_dir(name);
  json manifest = default_manifest();
  manifest["options"] = options;
  std::vector<std::pair<std::string, const char*>> models{{"seg", seg}, {"cls", cls}};
  if (with_mal) models.emplace_back("mal", kMalSource);
  for (const auto& [kind, source] : models) {
    const fs::path file = dir / (kind + ".pt");
    save_module(file, source, five_channel && kind == "seg");
    manifest["models"][kind] = {{"file", kind + ".pt"}, {"sha256", lunakit::sha256_file(file.string())}};
  }
  write_text(dir / "manifest.json", manifest.dump(2));
  return dir;
}

void rewrite_manifest(const fs::path& dir, const std::function<void(json&)>& edit) {
  json manifest = json::parse(read_text(dir / "manifest.json"));
  edit(manifest);
  write_text(dir / "manifest.json", manifest.dump(2));
}

// load() must throw lunakit::Error whose message contains every part.
void expect_load_error(const fs::path& dir, const std::vector<std::string>& parts) {
  try {
    lunakit::Bundle::load(dir.string());
    ADD_FAILURE() << "no error for " << dir;
  } catch (const lunakit::Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    for (const std::string& part : parts) EXPECT_NE(message.find(part), std::string::npos) << message;
  }
}

// Phantom: -1000 HU air with +100 HU cubes: A 5^3 at (20, 30, 40), B 4^3 at (44, 60, 30),
// C 2^3 at (4, 4, 4) (vanishes under the erosion). Each crop holds only its own cube.
struct Phantom {
  std::vector<int16_t> buffer;
  int64_t slices = 64, rows = 96, cols = 96;
  lunakit::Geometry geometry{{-10.0, 20.0, 30.0}, {0.7, 0.8, 2.5}, {1, 0, 0, 0, 1, 0, 0, 0, 1}};

  Phantom() : buffer(static_cast<size_t>(64 * 96 * 96), int16_t{-1000}) {
    cube(20, 30, 40, 5);
    cube(44, 60, 30, 4);
    cube(4, 4, 4, 2);
  }
  void cube(int64_t i0, int64_t r0, int64_t c0, int64_t n) {
    for (int64_t i = i0; i < i0 + n; ++i)
      for (int64_t r = r0; r < r0 + n; ++r)
        for (int64_t c = c0; c < c0 + n; ++c) buffer[static_cast<size_t>((i * rows + r) * cols + c)] = 100;
  }
  lunakit::Volume volume() const { return lunakit::Volume::from_buffer(buffer.data(), slices, rows, cols, geometry); }

  // Mean of the 32 x 48 x 48 crop around center_irc, shifted inside the volume.
  double crop_mean(const lunakit::Vec3& center_irc) const {
    const std::array<int64_t, 3> size{32, 48, 48}, dims{slices, rows, cols};
    std::array<int64_t, 3> start{};
    for (int k = 0; k < 3; ++k) {
      start[k] = static_cast<int64_t>(std::nearbyint(center_irc[k] - size[k] / 2.0));
      start[k] = std::clamp<int64_t>(start[k], 0, dims[k] - size[k]);
    }
    double sum = 0.0;
    for (int64_t i = start[0]; i < start[0] + size[0]; ++i)
      for (int64_t r = start[1]; r < start[1] + size[1]; ++r)
        for (int64_t c = start[2]; c < start[2] + size[2]; ++c)
          sum += buffer[static_cast<size_t>((i * rows + r) * cols + c)];
    return sum / (32.0 * 48.0 * 48.0);
  }
};

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
double expected_p_nodule(double crop_mean) { return sigmoid((crop_mean + 998.6) * 5.0); }

}  // namespace

// --- SHA-256 ---------------------------------------------------------------------------------

TEST(Sha256, FipsVectors) {
  auto hex = [](const std::string& s) { return lunakit::sha256_hex(s.data(), s.size()); };
  EXPECT_EQ(hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqr"
                "stnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  EXPECT_EQ(hex(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, FileEqualsBytesAcrossChunks) {
  const fs::path dir = temp_dir("sha");
  std::string bytes(3 * (1 << 20) + 77, '\0');
  std::mt19937 rng(7);
  for (char& ch : bytes) ch = static_cast<char>(rng() & 0xff);
  write_text(dir / "blob", bytes);
  EXPECT_EQ(lunakit::sha256_file((dir / "blob").string()), lunakit::sha256_hex(bytes.data(), bytes.size()));
  EXPECT_THROW(lunakit::sha256_file((dir / "absent").string()), lunakit::Error);
  fs::remove_all(dir);
}

// --- Volume::from_buffer -----------------------------------------------------------------------

TEST(Volume, FromBufferWrapsWithoutCopy) {
  std::vector<int16_t> pixels(2 * 3 * 4);
  for (size_t k = 0; k < pixels.size(); ++k) pixels[k] = static_cast<int16_t>(k);
  const lunakit::Volume v = lunakit::Volume::from_buffer(pixels.data(), 2, 3, 4, lunakit::Geometry());
  EXPECT_EQ(v.voxels.data_ptr<int16_t>(), pixels.data());
  EXPECT_EQ(v.voxels.sizes(), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(v.voxels[1][2][3].item<int>(), 23);  // [I, R, C], C fastest
  pixels[23] = -5;                               // the volume sees the caller's buffer
  EXPECT_EQ(v.voxels[1][2][3].item<int>(), -5);
  const int16_t* null_buffer = nullptr;
  EXPECT_THROW(lunakit::Volume::from_buffer(null_buffer, 2, 3, 4, lunakit::Geometry()), lunakit::Error);
  EXPECT_THROW(lunakit::Volume::from_buffer(pixels.data(), 0, 3, 4, lunakit::Geometry()), lunakit::Error);
  std::vector<float> floats(8, 1.5f);
  EXPECT_EQ(lunakit::Volume::from_buffer(floats.data(), 2, 2, 2, lunakit::Geometry()).voxels.scalar_type(),
            torch::kFloat32);
}

// --- Analyzer ----------------------------------------------------------------------------------

TEST(Analyzer, FindingsOfHandBuiltPhantom) {
  const Phantom phantom;
  const lunakit::Bundle bundle = lunakit::Bundle::load(make_bundle("ok").string());
  const lunakit::Analyzer analyzer(bundle);
  std::vector<std::string> stages;
  const auto findings = analyzer.analyze(phantom.volume(), [&](const std::string& stage, int64_t done, int64_t total) {
    if (done == total) stages.push_back(stage);
  });
  ASSERT_EQ(findings.size(), 2u);  // the 2^3 cube erodes away
  EXPECT_EQ(stages, (std::vector<std::string>{"segment", "group", "classify"}));
  // Cube A (5^3 -> 3^3 after erosion) has the higher crop mean, so comes first.
  const lunakit::Finding& a = findings[0];
  const lunakit::Finding& b = findings[1];
  EXPECT_EQ(a.voxel_count, 27);
  EXPECT_EQ(b.voxel_count, 8);
  EXPECT_EQ(a.bbox_min_irc, (std::array<int64_t, 3>{21, 31, 41}));
  EXPECT_EQ(a.bbox_max_irc, (std::array<int64_t, 3>{23, 33, 43}));
  EXPECT_EQ(b.bbox_min_irc, (std::array<int64_t, 3>{45, 61, 31}));
  EXPECT_EQ(b.bbox_max_irc, (std::array<int64_t, 3>{46, 62, 32}));
  for (int k = 0; k < 3; ++k) {
    EXPECT_NEAR(a.center_irc[k], (std::array<double, 3>{22, 32, 42})[k], 1e-12);
    EXPECT_NEAR(b.center_irc[k], (std::array<double, 3>{45.5, 61.5, 31.5})[k], 1e-12);
  }
  EXPECT_NEAR(a.center_xyz[0], -10.0 + 42 * 0.7, 1e-9);
  EXPECT_NEAR(a.center_xyz[1], 20.0 + 32 * 0.8, 1e-9);
  EXPECT_NEAR(a.center_xyz[2], 30.0 + 22 * 2.5, 1e-9);
  EXPECT_NEAR(a.diameter_mm, std::cbrt(6.0 * 27 * 0.7 * 0.8 * 2.5 / M_PI), 1e-12);
  EXPECT_NEAR(a.p_nodule, expected_p_nodule(phantom.crop_mean(a.center_irc)), 1e-3);
  EXPECT_NEAR(b.p_nodule, expected_p_nodule(phantom.crop_mean(b.center_irc)), 1e-3);
  EXPECT_GT(a.p_nodule, 0.8);  // the larger cube: 125 dense voxels in its crop
  EXPECT_LT(b.p_nodule, 0.2);  // 64
  EXPECT_FALSE(a.p_malignant.has_value());
}

TEST(Analyzer, TensorAndWrappedBufferGiveTheSameFindings) {
  const Phantom phantom;
  const lunakit::Analyzer analyzer(lunakit::Bundle::load(make_bundle("same").string()), {.seg_batch_size = 3});
  const lunakit::Volume wrapped = phantom.volume();
  const lunakit::Volume owned{wrapped.voxels.clone().to(torch::kFloat32), wrapped.geometry};
  const auto x = analyzer.analyze(wrapped);
  const auto y = analyzer.analyze(owned);
  ASSERT_EQ(x.size(), y.size());
  for (size_t k = 0; k < x.size(); ++k) {
    EXPECT_EQ(x[k].center_irc, y[k].center_irc);
    EXPECT_NEAR(x[k].p_nodule, y[k].p_nodule, 1e-6);
  }
}

TEST(Analyzer, MalignancyOnAllOrOnlyNodules) {
  const Phantom phantom;
  const auto all = lunakit::Analyzer(lunakit::Bundle::load(make_bundle("mal_all", json::object(), true).string()))
                       .analyze(phantom.volume());
  ASSERT_EQ(all.size(), 2u);
  for (const auto& f : all) {
    ASSERT_TRUE(f.p_malignant.has_value());
    EXPECT_NEAR(*f.p_malignant, 1.0 - f.p_nodule, 1e-6);
  }
  // Only candidates above a threshold between the two p_nodule values get a p_malignant.
  const double between = (all[0].p_nodule + all[1].p_nodule) / 2.0;
  const json options{{"malignancy_on", "nodules"}, {"nodule_threshold", between}};
  const auto some = lunakit::Analyzer(lunakit::Bundle::load(make_bundle("mal_some", options, true).string()))
                        .analyze(phantom.volume());
  ASSERT_EQ(some.size(), 2u);
  EXPECT_TRUE(some[0].p_malignant.has_value());
  EXPECT_FALSE(some[1].p_malignant.has_value());
}

TEST(Analyzer, NoCandidatesGivesNoFindings) {
  std::vector<int16_t> air(static_cast<size_t>(32 * 48 * 48), int16_t{-1000});  // nothing above -500 HU
  const lunakit::Analyzer analyzer(lunakit::Bundle::load(make_bundle("empty").string()));
  EXPECT_TRUE(analyzer.analyze(lunakit::Volume::from_buffer(air.data(), 32, 48, 48, lunakit::Geometry())).empty());
}

TEST(Analyzer, RefusesBadVolumes) {
  const lunakit::Analyzer analyzer(lunakit::Bundle::load(make_bundle("badvol").string()));
  auto expect_error = [&](const lunakit::Volume& v, const std::string& part) {
    try {
      analyzer.analyze(v);
      ADD_FAILURE() << "no error, expected " << part;
    } catch (const lunakit::Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  std::vector<float> with_nan(static_cast<size_t>(32 * 48 * 48), -1000.0f);
  with_nan[1234] = std::nanf("");
  expect_error(lunakit::Volume::from_buffer(with_nan.data(), 32, 48, 48, lunakit::Geometry()), "NaN");
  std::vector<int16_t> small(static_cast<size_t>(31 * 48 * 48), int16_t{0});
  expect_error(lunakit::Volume::from_buffer(small.data(), 31, 48, 48, lunakit::Geometry()), "smaller than the crop");
  expect_error(lunakit::Volume::from_buffer(small.data(), 1, 48, 48, lunakit::Geometry()), "at least 2");
  expect_error(lunakit::Volume{torch::zeros({4, 4}, torch::kInt16), lunakit::Geometry()}, "3D");
  expect_error(lunakit::Volume{torch::zeros({32, 48, 48}, torch::kInt32), lunakit::Geometry()}, "int16 or float32");
}

TEST(Analyzer, RefusesUnavailableDevice) {
  const lunakit::Bundle bundle = lunakit::Bundle::load(make_bundle("device").string());
  EXPECT_THROW(lunakit::Analyzer(bundle, {.device = "tpu"}), lunakit::Error);
  EXPECT_THROW(lunakit::Analyzer(bundle, {.device = "cuda:x"}), lunakit::Error);
  if (!torch::cuda::is_available()) {
    try {
      lunakit::Analyzer analyzer(bundle, {.device = "cuda"});
      ADD_FAILURE() << "cuda accepted without a GPU";
    } catch (const lunakit::Error& e) {
      EXPECT_NE(std::string(e.what()).find("no CUDA GPU"), std::string::npos) << e.what();
    }
  }
}

TEST(Analyzer, PrecisionFastModeKeepsTheFindings) {
  const Phantom phantom;
  const lunakit::Bundle bundle = lunakit::Bundle::load(make_bundle("precision").string());
  const lunakit::Analyzer exact(bundle);
  EXPECT_EQ(exact.options().precision, "fp32");  // the default
  const lunakit::Analyzer fast(bundle, {.precision = "bf16"});
  EXPECT_EQ(fast.options().precision, "bf16");
  EXPECT_EQ(lunakit::Analyzer(bundle, {.precision = "auto"}).options().precision,
            lunakit::native_bf16("cpu") ? "bf16" : "fp32");
  const auto want = exact.analyze(phantom.volume());
  const auto got = fast.analyze(phantom.volume());
  ASSERT_EQ(got.size(), want.size());
  for (size_t k = 0; k < want.size(); ++k) {
    EXPECT_EQ(got[k].voxel_count, want[k].voxel_count);
    EXPECT_EQ(got[k].center_irc, want[k].center_irc);
    EXPECT_NEAR(got[k].p_nodule, want[k].p_nodule, 0.01);
  }
  try {
    lunakit::Analyzer analyzer(bundle, {.precision = "fp16"});
    ADD_FAILURE() << "precision fp16 accepted";
  } catch (const lunakit::Error& e) {
    EXPECT_STREQ(e.what(), "precision fp16: must be 'fp32', 'bf16' or 'auto'");
  }
  try {
    lunakit::PipelineOptions::from_json(R"({"precision": "half"})");
    ADD_FAILURE() << "options precision half accepted";
  } catch (const lunakit::Error& e) {
    EXPECT_STREQ(e.what(), "options: precision must be 'fp32', 'bf16' or 'auto', got 'half'");
  }
}

// --- Bundle::load bad input --------------------------------------------------------------------

TEST(Bundle, ReadsOptionsAndChecksums) {
  const fs::path dir = make_bundle("opts", json{{"seg_threshold", 0.25}, {"crop_size", {16, 24, 24}}}, true);
  const lunakit::Bundle bundle = lunakit::Bundle::load(dir.string());
  EXPECT_DOUBLE_EQ(bundle.options().seg_threshold, 0.25);
  EXPECT_EQ(bundle.options().crop_size, (std::array<int64_t, 3>{16, 24, 24}));
  EXPECT_EQ(bundle.options().cls_batch_size, 64);  // default
  EXPECT_TRUE(bundle.has_malignancy_model());
  EXPECT_EQ(bundle.model_sha256().at("cls"), lunakit::sha256_file((dir / "cls.pt").string()));
}

TEST(Bundle, RefusesMissingFolderManifestOrFile) {
  expect_load_error(temp_dir("none") / "absent", {"bundle folder does not exist"});
  expect_load_error(temp_dir("nomanifest"), {"no manifest.json"});
  const fs::path dir = make_bundle("missing");
  fs::remove(dir / "cls.pt");
  expect_load_error(dir, {dir.string(), "model file cls.pt is missing"});
}

TEST(Bundle, RefusesWrongChecksum) {
  const fs::path dir = make_bundle("checksum");
  rewrite_manifest(dir, [](json& m) { m["models"]["seg"]["sha256"] = std::string(64, '0'); });
  expect_load_error(dir, {"checksum mismatch for seg.pt"});
}

TEST(Bundle, RefusesUnknownFormatVersionOrFormat) {
  const fs::path dir = make_bundle("version");
  rewrite_manifest(dir, [](json& m) { m["format_version"] = 2; });
  expect_load_error(dir, {"manifest.json", "format version 2 is not supported"});
  rewrite_manifest(dir, [](json& m) { m.erase("format_version"); });
  expect_load_error(dir, {"format version None is not supported"});
  rewrite_manifest(dir, [](json& m) { m["format"] = "something-else"; });
  expect_load_error(dir, {"not a lunakit bundle manifest"});
  write_text(dir / "manifest.json", "{\"format\": ");
  expect_load_error(dir, {"not valid JSON"});
}

TEST(Bundle, RefusesBadOptionsAndEntries) {
  const fs::path dir = make_bundle("options");
  rewrite_manifest(dir, [](json& m) { m["options"] = {{"seg_threshold", 1.5}}; });
  expect_load_error(dir, {"seg_threshold must lie in [0, 1]"});
  rewrite_manifest(dir, [](json& m) { m["options"] = {{"frobnication", 1}}; });
  expect_load_error(dir, {"unknown field(s) frobnication"});
  rewrite_manifest(dir, [](json& m) { m["options"] = {{"crop_mode", "wrap"}}; });
  expect_load_error(dir, {"crop_mode"});
  rewrite_manifest(dir, [](json& m) { m["options"] = {{"center_mode", "peak"}}; });
  expect_load_error(dir, {"center_mode must be 'mass', 'core' or 'core3d', got 'peak'"});
  rewrite_manifest(dir, [](json& m) {
    m["options"] = json::object();
    m["models"].erase("cls");
  });
  expect_load_error(dir, {"must name a seg and a cls model"});
}

TEST(Bundle, RefusesModelFilesOutsideTheFolder) {
  const fs::path dir = make_bundle("outside");
  const fs::path elsewhere = dir.parent_path() / "outside-elsewhere";
  fs::create_directories(elsewhere);
  fs::copy_file(dir / "seg.pt", elsewhere / "seg.pt", fs::copy_options::overwrite_existing);
  rewrite_manifest(dir, [](json& m) { m["models"]["seg"]["file"] = "../outside-elsewhere/seg.pt"; });
  expect_load_error(dir,
                    {"model entry 'seg' names '../outside-elsewhere/seg.pt', not a file inside the bundle folder"});
  rewrite_manifest(dir, [](json& m) { m["models"]["seg"]["file"] = ".."; });
  expect_load_error(dir, {"model entry 'seg' names '..'"});
}

TEST(Bundle, ReadManifestChecksWithoutLoadingModels) {
  const fs::path dir = make_bundle("manifest-only");
  write_text(dir / "cls.pt", "not a model: read_manifest does not load it");
  rewrite_manifest(dir,
                   [&](json& m) { m["models"]["cls"]["sha256"] = lunakit::sha256_file((dir / "cls.pt").string()); });
  const lunakit::Manifest manifest = lunakit::read_manifest(dir.string());
  EXPECT_EQ(manifest.model_format, "torchscript");
  EXPECT_EQ(manifest.model_file.at("cls"), "cls.pt");
  EXPECT_EQ(json::parse(manifest.json)["format"], "lunakit-bundle");
  lunakit::ManifestFormat onnx;
  onnx.name = "lunakit-onnx-bundle";
  onnx.label = "ONNX bundle";
  try {
    lunakit::read_manifest(dir.string(), onnx);
    FAIL() << "an ONNX reader accepted a TorchScript manifest";
  } catch (const lunakit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a lunakit ONNX bundle manifest (its format is 'lunakit-bundle')"),
              std::string::npos)
        << e.what();
  }
}

TEST(PipelineOptions, FromJsonFillsDefaultsAndRefusesWrongTypes) {
  const lunakit::PipelineOptions o = lunakit::PipelineOptions::from_json(R"({"seg_threshold": 0.25})");
  EXPECT_DOUBLE_EQ(o.seg_threshold, 0.25);
  EXPECT_EQ(o.context_slices, 3);
  EXPECT_FALSE(o.cls_flips);
  EXPECT_TRUE(lunakit::PipelineOptions::from_json(R"({"cls_flips": true})").cls_flips);
  EXPECT_EQ(json::parse(o.to_json()), json::parse(lunakit::PipelineOptions::from_json(o.to_json()).to_json()));
  for (const auto& [text, message] : std::vector<std::pair<std::string, std::string>>{
           {R"({"seg_threshold": "abc"})", "options: seg_threshold must be a number"},
           {R"({"connectivity": 6.5})", "options: connectivity must be an integer"},
           {R"({"cls_flips": 1})", "options: cls_flips must be true or false"},
           {R"({"hu_max": 1e400})", "options: not valid JSON"},
           {"[1, 2]", "options: must be a JSON object"}}) {
    try {
      lunakit::PipelineOptions::from_json(text);
      ADD_FAILURE() << text << " was accepted";
    } catch (const lunakit::Error& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
  }
}

TEST(Bundle, RefusesFileThatIsNotTorchScript) {
  const fs::path dir = make_bundle("garbage");
  write_text(dir / "cls.pt", "this is not a zip archive");
  rewrite_manifest(dir,
                   [&](json& m) { m["models"]["cls"]["sha256"] = lunakit::sha256_file((dir / "cls.pt").string()); });
  expect_load_error(dir, {"cls.pt", "not a loadable TorchScript model"});
}

TEST(Bundle, RefusesModelsThatDoNotTakeThePipelinesInput) {
  expect_load_error(make_bundle("seg5", json::object(), false, kFiveChannelSegSource, kClsSource, true),
                    {"seg.pt", "seg model does not fit the pipeline's input [1, 7, 64, 64]"});
  expect_load_error(make_bundle("clsshape", json::object(), false, kSegSource, kWrongClsSource),
                    {"cls.pt", "cls model does not fit the pipeline's input [1, 1, 32, 48, 48]", "tuple"});
}

// --- findings.json / CSV / atomic writes -------------------------------------------------------

TEST(Findings, JsonHasResultsSchemaAndCsvIsLuna16) {
  const Phantom phantom;
  const lunakit::Bundle bundle = lunakit::Bundle::load(make_bundle("json", json::object(), true).string());
  const auto findings = lunakit::Analyzer(bundle).analyze(phantom.volume());
  lunakit::FindingsDocument doc = lunakit::FindingsDocument::from_bundle(bundle, "1.2.3", "scan.mhd");
  doc.size_irc = {phantom.slices, phantom.rows, phantom.cols};
  doc.geometry = phantom.geometry;
  const json d = json::parse(lunakit::findings_json(doc, findings));
  std::vector<std::string> keys;
  for (const auto& [key, value] : d.items()) keys.push_back(key);
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(keys, (std::vector<std::string>{"findings", "geometry", "lunakit_version", "model_sha256", "options",
                                            "series_uid", "size_irc", "source", "torch_version"}));
  EXPECT_EQ(d["series_uid"], "1.2.3");
  EXPECT_EQ(d["size_irc"], json({64, 96, 96}));
  EXPECT_EQ(d["geometry"]["spacing_xyz"], json({0.7, 0.8, 2.5}));
  EXPECT_EQ(d["geometry"]["direction"][1], json({0.0, 1.0, 0.0}));
  EXPECT_EQ(d["options"]["crop_size"], json({32, 48, 48}));
  EXPECT_EQ(d["model_sha256"]["mal"], bundle.model_sha256().at("mal"));
  ASSERT_EQ(d["findings"].size(), 2u);
  const json& f = d["findings"][0];
  EXPECT_EQ(f["voxel_count"], 27);
  EXPECT_EQ(f["bbox_irc"], json({{21, 31, 41}, {23, 33, 43}}));
  EXPECT_EQ(f["center_irc"][0].get<double>(), findings[0].center_irc[0]);
  EXPECT_EQ(f["p_nodule"].get<double>(), findings[0].p_nodule);  // full precision
  EXPECT_EQ(f["p_malignant"].get<double>(), *findings[0].p_malignant);

  const std::string csv = lunakit::findings_csv("1.2.3", findings);
  std::istringstream lines(csv);
  std::string header, row;
  std::getline(lines, header);
  EXPECT_EQ(header, "seriesuid,coordX,coordY,coordZ,probability\r");
  std::getline(lines, row);
  EXPECT_EQ(row.rfind("1.2.3,", 0), 0u) << row;
  EXPECT_NE(row.find(",85.0,"), std::string::npos) << row;  // z = 30 + 22 * 2.5, integral: Python writes 85.0
  // The numbers round-trip exactly (shortest representation, as Python's repr).
  std::vector<double> numbers;
  std::istringstream fields(row.substr(6));
  for (std::string field; std::getline(fields, field, ',');) numbers.push_back(std::stod(field));
  ASSERT_EQ(numbers.size(), 4u);
  EXPECT_EQ(numbers[0], findings[0].center_xyz[0]);
  EXPECT_EQ(numbers[1], findings[0].center_xyz[1]);
  EXPECT_EQ(numbers[2], findings[0].center_xyz[2]);
  EXPECT_EQ(numbers[3], findings[0].p_nodule);
}

TEST(Findings, AtomicWriteLeavesNothingOnFailure) {
  const fs::path dir = temp_dir("atomic");
  lunakit::write_files_atomically({{(dir / "a.json").string(), "{}\n"}, {(dir / "b.csv").string(), "x\r\n"}});
  EXPECT_EQ(read_text(dir / "a.json"), "{}\n");
  EXPECT_EQ(read_text(dir / "b.csv"), "x\r\n");
  // A missing folder is created; one below a file cannot be, and then nothing is written.
  lunakit::write_files_atomically({{(dir / "new" / "e.json").string(), "{}"}});
  EXPECT_EQ(read_text(dir / "new" / "e.json"), "{}");
  std::ofstream(dir / "no") << "a file";
  EXPECT_THROW(
      lunakit::write_files_atomically({{(dir / "c.json").string(), "{}"}, {(dir / "no" / "d.csv").string(), ""}}),
      lunakit::Error);
  EXPECT_FALSE(fs::exists(dir / "c.json"));
  size_t entries = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(dir)) ++entries;
  EXPECT_EQ(entries, 4u);  // a.json, b.csv, new, no: no temporaries left
  fs::remove_all(dir);
}

// --- DICOM (needs LUNAKIT_TEST_DATA: the real series, copied and altered) ----------------------

namespace {

const char* kSeriesUid = "1.3.6.1.4.1.14519.5.2.1.7085.2626.242193282649561899185427104083";

fs::path real_ct_dir() {
  const char* root = std::getenv("LUNAKIT_TEST_DATA");
  if (root == nullptr) return {};
  const fs::path dir = fs::path(root) / "ct" / "C3N-00247-chest-ct";
  EXPECT_TRUE(fs::is_directory(dir)) << "missing test data " << dir;
  return dir;
}

std::vector<fs::path> dicom_files(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

void expect_dicom_error(const fs::path& dir, const std::vector<std::string>& parts, const std::string& uid = "") {
  try {
    lunakit::read_dicom_series(dir.string(), uid);
    ADD_FAILURE() << "no error for " << dir;
  } catch (const lunakit::Error& e) {
    for (const std::string& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(Dicom, ReadsTheRealSeries) {
  const fs::path src = real_ct_dir();
  if (src.empty()) GTEST_SKIP() << "LUNAKIT_TEST_DATA is not set";
  const lunakit::DicomScan scan = lunakit::read_dicom_series(src.string());
  EXPECT_EQ(scan.series_uid, kSeriesUid);
  EXPECT_EQ(scan.volume.voxels.sizes(), (std::vector<int64_t>{99, 512, 512}));
  EXPECT_EQ(scan.volume.voxels.min().item<int>(), -1024);
  EXPECT_EQ(scan.volume.voxels.max().item<int>(), 3071);
  const lunakit::Geometry& g = scan.volume.geometry;
  EXPECT_DOUBLE_EQ(g.spacing_xyz()[0], 0.564453125);
  EXPECT_DOUBLE_EQ(g.spacing_xyz()[2], 3.0);
  EXPECT_DOUBLE_EQ(g.origin_xyz()[0], -143.2177734375);
  EXPECT_DOUBLE_EQ(g.origin_xyz()[2], -288.0);  // the lowest slice, wherever its file sorts
  const auto series = lunakit::list_dicom_series(src.string());
  ASSERT_EQ(series.size(), 1u);
  EXPECT_EQ(series[0].file_count, 99);
}

TEST(Dicom, RefusesMissingSlicesAndMixedSeries) {
  const fs::path src = real_ct_dir();
  if (src.empty()) GTEST_SKIP() << "LUNAKIT_TEST_DATA is not set";
  const std::vector<fs::path> files = dicom_files(src);
  ASSERT_EQ(files.size(), 99u);

  // Every file but one from the middle of the stack: a gap twice the spacing.
  const fs::path gap = temp_dir("dicom_gap");
  const lunakit::DicomScan full = lunakit::read_dicom_series(src.string());
  for (const fs::path& f : files) fs::copy_file(f, gap / f.filename());
  // Remove the file at the middle position (files are not in position order).
  {
    std::vector<std::pair<double, fs::path>> by_z;
    for (const fs::path& f : dicom_files(gap)) {
      const fs::path one = temp_dir("dicom_one");
      fs::copy_file(f, one / f.filename());
      by_z.emplace_back(lunakit::read_dicom_series(one.string()).volume.geometry.origin_xyz()[2], f);
      fs::remove_all(one);
      if (by_z.size() >= 99) break;
    }
    std::sort(by_z.begin(), by_z.end());
    fs::remove(by_z[50].second);
  }
  expect_dicom_error(gap, {gap.string(), "not evenly spaced", "missing"});
  fs::remove_all(gap);

  // A copy of one slice with another SeriesInstanceUID (same length, last digit changed).
  const fs::path mixed = temp_dir("dicom_mixed");
  for (const fs::path& f : files) fs::copy_file(f, mixed / f.filename());
  std::string bytes = read_text(files[0]);
  const size_t at = bytes.find(kSeriesUid);
  ASSERT_NE(at, std::string::npos);
  std::string other_uid = kSeriesUid;
  other_uid.back() = '4';
  bytes.replace(at, other_uid.size(), other_uid);
  write_text(mixed / "other.dcm", bytes);
  expect_dicom_error(mixed, {"2 DICOM series", kSeriesUid, other_uid, "--series-uid"});
  EXPECT_EQ(lunakit::read_dicom_series(mixed.string(), kSeriesUid).volume.slices(), 99);
  EXPECT_EQ(lunakit::read_dicom_series(mixed.string(), other_uid).volume.slices(), 1);
  expect_dicom_error(mixed, {"no series 9.9"}, "9.9");
  fs::remove_all(mixed);

  expect_dicom_error(temp_dir("dicom_empty"), {"no DICOM series"});
  expect_dicom_error("/nonexistent/dicom", {"no such file or directory"});
}
