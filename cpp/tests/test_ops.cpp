// The kernels through the C++ API (lunakit/ops.h) on small hand-computed cases, and the CUDA
// labeling algorithm run on the host (its "CPU twin") in shuffled voxel orders.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../src/ops/voxel_kernels.h"
#include "lunakit/error.h"
#include "lunakit/ops.h"

namespace ops = lunakit::ops;
namespace twin = lunakit::ops::detail;

namespace {

// The message of the lunakit::Error that f throws ("" when it throws none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const lunakit::Error& e) {
    return e.what();
  }
  return "";
}

at::Tensor ramp_volume(int64_t ni, int64_t nr, int64_t nc, at::ScalarType dtype) {
  return at::arange(ni * nr * nc, at::kFloat).reshape({ni, nr, nc}).to(dtype);
}

at::Tensor centers(std::vector<double> values) { return at::tensor(values, at::kDouble).reshape({-1, 3}); }

}  // namespace

TEST(ExtractCrops, ShiftCropIsTheSliceAtTheRoundedStart) {
  const at::Tensor volume = ramp_volume(6, 7, 8, at::kShort);
  ops::CropOptions options;
  options.size = {2, 3, 4};
  options.clip = std::nullopt;
  // start = round(3 - 1, 3.5 - 1.5, 4 - 2) = (2, 2, 2).
  const at::Tensor crops = ops::extract_crops(volume, centers({3.0, 3.5, 4.0}), options);
  ASSERT_EQ(crops.sizes(), at::IntArrayRef({1, 1, 2, 3, 4}));
  EXPECT_EQ(crops.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(crops[0][0], volume.slice(0, 2, 4).slice(1, 2, 5).slice(2, 2, 6).to(at::kFloat)));
}

TEST(ExtractCrops, HalfwayStartsRoundToEven) {
  const at::Tensor volume = ramp_volume(1, 1, 40, at::kFloat);
  ops::CropOptions options;
  options.size = {1, 1, 4};
  options.clip = std::nullopt;
  // c - 2 = 8.5 -> 8, 9.5 -> 10, 10.5 -> 10.
  const at::Tensor crops = ops::extract_crops(volume, centers({0, 0, 10.5, 0, 0, 11.5, 0, 0, 12.5}), options);
  EXPECT_EQ(crops[0][0][0][0][0].item<float>(), 8.0f);
  EXPECT_EQ(crops[1][0][0][0][0].item<float>(), 10.0f);
  EXPECT_EQ(crops[2][0][0][0][0].item<float>(), 10.0f);
}

TEST(ExtractCrops, ShiftMovesInsideAndPadFillsOutside) {
  const at::Tensor volume = ramp_volume(4, 4, 4, at::kFloat);  // values 0..63
  ops::CropOptions options;
  options.size = {2, 2, 2};
  options.clip = std::make_pair(0.0, 50.0);
  const at::Tensor shifted = ops::extract_crops(volume, centers({0, 0, 0}), options);
  EXPECT_EQ(shifted[0][0][0][0][0].item<float>(), 0.0f);  // start (-1,-1,-1) moved to (0,0,0)
  const at::Tensor corner = ops::extract_crops(volume, centers({9, 9, 9}), options);
  EXPECT_EQ(corner[0][0][1][1][1].item<float>(), 50.0f);  // voxel 63 clipped to 50

  options.mode = "pad";
  options.fill = -5.0;
  const at::Tensor padded = ops::extract_crops(volume, centers({0, 0, 0}), options);
  EXPECT_EQ(padded[0][0][0][0][0].item<float>(), -5.0f);  // (-1,-1,-1): outside
  EXPECT_EQ(padded[0][0][1][1][1].item<float>(), 0.0f);   // (0,0,0)
  EXPECT_EQ(padded[0][0][1][1][0].item<float>(), -5.0f);  // (0,0,-1)
}

TEST(ExtractCrops, OutBufferIsFilledAndReturned) {
  const at::Tensor volume = ramp_volume(5, 5, 5, at::kShort);
  ops::CropOptions options;
  options.size = {3, 3, 3};
  at::Tensor out = at::full({2, 1, 3, 3, 3}, 7.0f);
  at::Tensor& result = ops::extract_crops_out(volume, centers({2, 2, 2, 1.5, 2, 2}), out, options);
  EXPECT_EQ(result.data_ptr(), out.data_ptr());
  EXPECT_TRUE(at::equal(out, ops::extract_crops(volume, centers({2, 2, 2, 1.5, 2, 2}), options)));
  EXPECT_EQ(out[0][0][0][0][0].item<float>(), 0.0f);   // start round(0.5) = 0 (half to even)
  EXPECT_EQ(out[0][0][2][2][2].item<float>(), 62.0f);  // voxel (2, 2, 2) = 50 + 10 + 2
}

TEST(ExtractCrops, BadInputThrowsLunakitError) {
  const at::Tensor volume = at::zeros({10, 10, 10}, at::kShort);
  ops::CropOptions small;
  small.size = {4, 4, 4};
  EXPECT_NE(error_of([&] {
              ops::extract_crops(at::zeros({10, 10}, at::kShort), centers({1, 1, 1}), small);
            }).find("extract_crops: volume must be [I, R, C], got 2 dims"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              ops::extract_crops(volume.to(at::kDouble), centers({1, 1, 1}), small);
            }).find("volume must be int16 or float32, got Double"),
            std::string::npos);
  EXPECT_NE(error_of([&] { ops::extract_crops(volume, centers({NAN, 1, 1}), small); }).find("NaN or infinite"),
            std::string::npos);
  EXPECT_NE(error_of([&] { ops::extract_crops(volume, centers({1, 1, 1})); }).find("smaller than the crop"),
            std::string::npos);
  ops::CropOptions wrong_mode = small;
  wrong_mode.mode = "mirror";
  EXPECT_NE(error_of([&] { ops::extract_crops(volume, centers({1, 1, 1}), wrong_mode); }).find("'mirror'"),
            std::string::npos);
  at::Tensor out = at::zeros({2, 1, 4, 4, 4});
  EXPECT_NE(
      error_of([&] { ops::extract_crops_out(volume, centers({1, 1, 1}), out, small); }).find("out must have shape"),
      std::string::npos);
}

TEST(BinaryErode, CubeErodesToItsCenterAndBorderToNothing) {
  at::Tensor mask = at::zeros({5, 5, 5}, at::kBool);
  mask.slice(0, 1, 4).slice(1, 1, 4).slice(2, 1, 4).fill_(true);
  const at::Tensor eroded = ops::binary_erode(mask);
  EXPECT_EQ(eroded.sum().item<int64_t>(), 1);
  EXPECT_TRUE(eroded[2][2][2].item<bool>());
  // All ones: only the interior survives (outside counts as background).
  EXPECT_EQ(ops::binary_erode(at::ones({3, 4, 5}, at::kBool)).sum().item<int64_t>(), 1 * 2 * 3);
  EXPECT_NE(error_of([] { ops::binary_erode(at::zeros({3, 3, 3})); }).find("binary_erode: mask must be bool"),
            std::string::npos);
}

TEST(LabelComponents, NumbersComponentsInRasterOrderOfFirstVoxel) {
  at::Tensor mask = at::zeros({3, 4, 4}, at::kBool);
  mask[0][3][3] = true;  // linear index 15
  mask[0][0][2] = true;  // index 2: the first voxel of all
  mask[1][0][2] = true;  // index 18, a face neighbor of (0, 0, 2)
  mask[2][1][0] = true;  // index 36, a corner step (1, -1, -1) from (1, 2, 1)
  mask[1][2][1] = true;  // index 25
  auto six = ops::label_components(mask, 6);
  EXPECT_EQ(six.count, 4);
  EXPECT_EQ(six.labels[0][0][2].item<int32_t>(), 1);
  EXPECT_EQ(six.labels[1][0][2].item<int32_t>(), 1);
  EXPECT_EQ(six.labels[0][3][3].item<int32_t>(), 2);
  EXPECT_EQ(six.labels[1][2][1].item<int32_t>(), 3);
  EXPECT_EQ(six.labels[2][1][0].item<int32_t>(), 4);
  EXPECT_EQ(six.labels.scalar_type(), at::kInt);
  auto corners = ops::label_components(mask, 26);
  EXPECT_EQ(corners.count, 3);
  EXPECT_EQ(corners.labels[2][1][0].item<int32_t>(), 3);
  auto edges = ops::label_components(mask, 18);
  EXPECT_EQ(edges.count, 4);  // the corner step does not join with 18
  EXPECT_NE(error_of([&] { ops::label_components(mask, 4); }).find("connectivity must be 6, 18 or 26, got 4"),
            std::string::npos);
}

TEST(ComponentStats, HandComputedCountsBoxesAndCenters) {
  at::Tensor labels = at::zeros({2, 3, 4}, at::kInt);
  labels[0][0][0] = 1;
  labels[0][0][1] = 1;
  labels[1][2][3] = 2;
  at::Tensor weights = at::zeros({2, 3, 4}, at::kDouble);
  weights[0][0][0] = 1.0;
  weights[0][0][1] = 3.0;
  weights[1][2][3] = 2.0;
  const auto unweighted = ops::component_stats(labels, 3);
  EXPECT_EQ(unweighted.voxel_count[0].item<int64_t>(), 2);
  EXPECT_EQ(unweighted.voxel_count[2].item<int64_t>(), 0);
  EXPECT_DOUBLE_EQ(unweighted.center_irc[0][2].item<double>(), 0.5);
  EXPECT_EQ(unweighted.bbox_max[0][2].item<int64_t>(), 1);
  EXPECT_EQ(unweighted.bbox_min[1][1].item<int64_t>(), 2);
  EXPECT_EQ(unweighted.bbox_min[2][0].item<int64_t>(), -1);
  EXPECT_TRUE(std::isnan(unweighted.center_irc[2][0].item<double>()));
  const auto weighted = ops::component_stats(labels, 2, weights);
  EXPECT_DOUBLE_EQ(weighted.center_irc[0][2].item<double>(), 0.75);
  EXPECT_DOUBLE_EQ(weighted.weight_sum[1].item<double>(), 2.0);
  EXPECT_DOUBLE_EQ(weighted.center_irc[1][0].item<double>(), 1.0);
  EXPECT_NE(error_of([&] { ops::component_stats(labels, 1); }).find("labels hold 2 at irc (1, 2, 3)"),
            std::string::npos);
}

TEST(ComponentCores, ThickestPartOfASquareWithATail) {
  // A 5 x 5 square with a tail along C on slice 0: in-plane depth 3 at the square's center
  // (1, 3, 3) and its neighbor toward the tail (1 + 2 from the background beside the tail's root).
  at::Tensor labels = at::zeros({2, 7, 16}, at::kInt);
  labels.index_put_({0, at::indexing::Slice(1, 6), at::indexing::Slice(1, 6)}, 1);
  labels.index_put_({0, 3, at::indexing::Slice(6, 15)}, 1);
  labels[1][6][15] = 2;  // one voxel in a corner: depth 1, its own core
  const at::Tensor core = ops::component_cores(labels, 2);
  EXPECT_EQ(core.sum().item<int64_t>(), 3);
  EXPECT_TRUE(core[0][3][3].item<bool>() && core[0][3][4].item<bool>() && core[1][6][15].item<bool>());
  EXPECT_NE(error_of([&] { ops::component_cores(labels, 1); }).find("labels must lie in 0..1, got 0..2"),
            std::string::npos);
}

TEST(ComponentCores, ThreeDimensionalDepthFindsTheBallOnASheet) {
  // A ball of radius 3 (center (5, 5, 5)) on a sheet 2 slices thick and 20 x 30 wide, slices 1 mm
  // and pixels 0.5 mm apart. In-plane the sheet is deepest (10 pixels against the ball's 7); in
  // 3D the ball's center is, 3.5 mm from the background (e.g. 3 slices and 1 row away), where
  // no sheet voxel lies more than 1 mm from a face.
  at::Tensor labels = at::zeros({12, 24, 34}, at::kInt);
  labels.index_put_({at::indexing::Slice(7, 9), at::indexing::Slice(2, 22), at::indexing::Slice(2, 32)}, 1);
  const at::Tensor g = at::stack(at::meshgrid({at::arange(12), at::arange(24), at::arange(34)}, "ij"));
  const at::Tensor ball = (g[0] - 5).square() + ((g[1] - 10) / 2.0).square() + ((g[2] - 10) / 2.0).square() <= 9;
  labels.masked_fill_(ball, 1);
  const at::Tensor core = ops::component_cores(labels, 1, std::array<double, 3>{1.0, 0.5, 0.5});
  EXPECT_EQ(core.sum().item<int64_t>(), 1);
  EXPECT_TRUE(core[5][10][10].item<bool>());
  const at::Tensor in_plane = ops::component_cores(labels, 1);
  EXPECT_FALSE(in_plane.index({at::indexing::Slice(0, 7)}).any().item<bool>());
  EXPECT_NE(error_of([&] {
              ops::component_cores(labels, 1, std::array<double, 3>{1.0, 0.0, 0.5});
            }).find("component_cores: spacing must be finite and positive, got 0"),
            std::string::npos);
}

// ---- the CUDA algorithms, run on the host -------------------------------------------------

TEST(CudaTwin, CropStartIsTheContract) {
  EXPECT_EQ(twin::crop_start(10.5, 4, 100, true), 8);      // 8.5 -> 8
  EXPECT_EQ(twin::crop_start(11.5, 4, 100, true), 10);     // 9.5 -> 10
  EXPECT_EQ(twin::crop_start(2.0, 8, 100, true), 0);       // shifted in
  EXPECT_EQ(twin::crop_start(2.0, 8, 100, false), -2);     // padded
  EXPECT_EQ(twin::crop_start(99.0, 8, 100, true), 92);     // shifted in
  EXPECT_EQ(twin::crop_start(1e300, 8, 100, false), 100);  // clamped, no overflow
  EXPECT_EQ(twin::crop_start(-1e300, 8, 100, false), -8);
}

// Union-find labeling exactly as label_cuda.cu runs it, one voxel at a time in `order`.
at::Tensor twin_label(const at::Tensor& mask, int connectivity, const std::vector<int64_t>& order) {
  const twin::Dims d{mask.size(0), mask.size(1), mask.size(2)};
  const bool* m = mask.data_ptr<bool>();
  std::vector<int32_t> parent(static_cast<size_t>(d.numel()));
  for (int64_t v : order) twin::label_init_voxel(m, parent.data(), v);
  for (int64_t v : order) {
    const int64_t c = v % d.c, t = v / d.c;
    twin::label_merge_voxel(m, parent.data(), d, connectivity, t / d.r, t % d.r, c);
  }
  for (int64_t v : order) twin::label_flatten_voxel(parent.data(), v);
  std::vector<int32_t> rank(parent.size());
  int32_t running = 0;
  for (int64_t v = 0; v < d.numel(); ++v) rank[v] = running += twin::label_root_flag(parent.data(), v);
  at::Tensor labels = at::empty(mask.sizes(), at::kInt);
  int32_t* out = labels.data_ptr<int32_t>();
  for (int64_t v : order) out[v] = twin::label_final_voxel(parent.data(), rank.data(), v);
  return labels;
}

TEST(CudaTwin, UnionFindLabelingMatchesCpuInAnyVoxelOrder) {
  std::mt19937_64 rng(7);
  const std::vector<std::array<int64_t, 3>> shapes{{1, 1, 1}, {1, 1, 9}, {5, 1, 7}, {6, 7, 8}, {9, 11, 13}};
  for (const auto& shape : shapes) {
    for (double density : {0.1, 0.3, 0.5, 0.8}) {
      const at::Tensor mask = at::rand({shape[0], shape[1], shape[2]}, at::kDouble) < density;
      std::vector<int64_t> order(static_cast<size_t>(mask.numel()));
      std::iota(order.begin(), order.end(), 0);
      for (int connectivity : {6, 18, 26}) {
        const auto want = ops::label_components(mask, connectivity);
        for (int trial = 0; trial < 3; ++trial) {
          if (trial == 1) std::reverse(order.begin(), order.end());
          if (trial == 2) std::shuffle(order.begin(), order.end(), rng);
          EXPECT_TRUE(at::equal(twin_label(mask, connectivity, order), want.labels))
              << "shape " << shape[0] << "x" << shape[1] << "x" << shape[2] << " density " << density
              << " connectivity " << connectivity << " trial " << trial;
        }
      }
    }
  }
}

TEST(CudaTwin, ErodeVoxelMatchesTheOp) {
  const at::Tensor mask = at::rand({7, 8, 9}, at::kDouble) < 0.8;
  const twin::Dims d{7, 8, 9};
  const at::Tensor want = ops::binary_erode(mask);
  for (int64_t i = 0; i < d.i; ++i)
    for (int64_t r = 0; r < d.r; ++r)
      for (int64_t c = 0; c < d.c; ++c)
        ASSERT_EQ(twin::erode_voxel(mask.data_ptr<bool>(), d, i, r, c), want[i][r][c].item<bool>());
}
