// label_components on the CPU: run-based two-pass union-find.
//
// Pass 1 walks the rows (i, r) in raster order, cuts each into runs of foreground along C
// and unites every run with the overlapping runs of the already seen neighbor rows (the
// previous row of its slice, and rows r-1, r, r+1 of the previous slice, as connectivity
// allows). Runs are numbered in raster order and a union always keeps the smaller run as
// root, so each component's root is the run holding its first voxel. Pass 2 numbers the
// roots in run order (scipy.ndimage.label's numbering) and paints the label volume.
// Deterministic by construction; the painting is parallel over rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "../ops.h"

namespace lunakit::ops::detail {
namespace {

class RunForest {
 public:
  std::vector<int32_t> c0, c1;  // run k covers columns [c0[k], c1[k]) of its row
  std::vector<int32_t> parent;  // union-find links between runs

  int32_t add(int32_t begin, int32_t end) {
    const auto k = static_cast<int32_t>(c0.size());
    c0.push_back(begin);
    c1.push_back(end);
    parent.push_back(k);
    return k;
  }

  int32_t find(int32_t x) {
    while (parent[x] != x) {
      parent[x] = parent[parent[x]];  // path halving
      x = parent[x];
    }
    return x;
  }

  void unite(int32_t a, int32_t b) {
    a = find(a);
    b = find(b);
    if (a == b) return;
    if (a < b) {
      parent[b] = a;
    } else {
      parent[a] = b;
    }
  }

  // Unite the runs [a_begin, a_end) of one row with the runs [b_begin, b_end) of a neighbor
  // row that touch them: columns overlapping after widening by `reach` (0 for a neighbor row
  // straight above or behind, 1 when diagonal steps along C are allowed).
  void unite_rows(int32_t a_begin, int32_t a_end, int32_t b_begin, int32_t b_end, int32_t reach) {
    int32_t j = b_begin;
    for (int32_t a = a_begin; a < a_end; ++a) {
      while (j < b_end && c1[j] + reach <= c0[a]) ++j;
      for (int32_t k = j; k < b_end && c0[k] < c1[a] + reach; ++k) unite(a, k);
    }
  }
};

// Appends the foreground runs of one row, skipping 8 background bytes at a time.
void cut_runs(const uint8_t* row, int64_t nc, RunForest& forest) {
  int64_t c = 0;
  while (c < nc) {
    while (c + 8 <= nc) {
      uint64_t word;
      std::memcpy(&word, row + c, 8);
      if (word != 0) break;
      c += 8;
    }
    while (c < nc && row[c] == 0) ++c;
    if (c >= nc) break;
    const int64_t begin = c;
    while (c < nc && row[c] != 0) ++c;
    forest.add(static_cast<int32_t>(begin), static_cast<int32_t>(c));
  }
}

}  // namespace

std::tuple<at::Tensor, c10::SymInt> label_components_cpu(const at::Tensor& mask, int64_t connectivity) {
  check_label_components(mask, connectivity);
  TORCH_CHECK_VALUE(mask.device().is_cpu(), "label_components: expected a CPU tensor, got ", mask.device());
  const at::Tensor m = mask.contiguous();
  const int64_t ni = m.size(0), nr = m.size(1), nc = m.size(2);
  at::Tensor labels = at::empty(m.sizes(), m.options().dtype(at::kInt));  // (I, R, C) int32
  if (m.numel() == 0) return {labels, c10::SymInt(0)};
  const uint8_t* src = reinterpret_cast<const uint8_t*>(m.data_ptr<bool>());

  // Pass 1: runs and unions. row_first[row] is the first run of row (i * nr + r).
  const int64_t n_rows = ni * nr;
  std::vector<int32_t> row_first(static_cast<size_t>(n_rows) + 1, 0);
  RunForest forest;
  const int32_t reach_in_slice = connectivity == 6 ? 0 : 1;   // row r-1 of the same slice
  const int32_t reach_behind = connectivity == 6 ? 0 : 1;     // row r of slice i-1
  const bool diagonal_rows_behind = connectivity != 6;        // rows r+-1 of slice i-1
  const int32_t reach_diagonal = connectivity == 26 ? 1 : 0;  // ... and how far along C
  for (int64_t i = 0; i < ni; ++i) {
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t row = i * nr + r;
      row_first[row] = static_cast<int32_t>(forest.c0.size());
      cut_runs(src + row * nc, nc, forest);
      const auto a_begin = row_first[row], a_end = static_cast<int32_t>(forest.c0.size());
      if (a_begin == a_end) continue;
      // Rows before this one are complete: row `other` holds runs [row_first[other], row_first[other + 1]).
      auto unite_with = [&](int64_t other, int32_t reach) {
        const int32_t b_begin = row_first[other];
        const int32_t b_end = row_first[other + 1];
        if (b_begin < b_end) forest.unite_rows(a_begin, a_end, b_begin, b_end, reach);
      };
      if (r > 0) unite_with(row - 1, reach_in_slice);
      if (i > 0) {
        const int64_t behind = row - nr;
        unite_with(behind, reach_behind);
        if (diagonal_rows_behind) {
          if (r > 0) unite_with(behind - 1, reach_diagonal);
          if (r + 1 < nr) unite_with(behind + 1, reach_diagonal);
        }
      }
    }
  }
  row_first[n_rows] = static_cast<int32_t>(forest.c0.size());

  // Pass 2: roots numbered in run (= raster) order; a run's root always precedes it.
  const auto n_runs = static_cast<int32_t>(forest.c0.size());
  std::vector<int32_t> run_label(static_cast<size_t>(n_runs));
  int32_t count = 0;
  for (int32_t k = 0; k < n_runs; ++k) {
    const int32_t root = forest.find(k);
    run_label[k] = root == k ? ++count : run_label[root];
  }

  // Paint: each row is zeros with its runs' labels.
  int32_t* out = labels.data_ptr<int32_t>();
  at::parallel_for(0, n_rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      int32_t* dst = out + row * nc;
      int32_t c = 0;
      for (int32_t k = row_first[row]; k < row_first[row + 1]; ++k) {
        std::memset(dst + c, 0, sizeof(int32_t) * static_cast<size_t>(forest.c0[k] - c));
        for (int32_t x = forest.c0[k]; x < forest.c1[k]; ++x) dst[x] = run_label[k];
        c = forest.c1[k];
      }
      std::memset(dst + c, 0, sizeof(int32_t) * static_cast<size_t>(nc - c));
    }
  });
  return {labels, c10::SymInt(static_cast<int64_t>(count))};
}

}  // namespace lunakit::ops::detail

TORCH_LIBRARY_IMPL(lunakit, CPU, m) { m.impl("label_components", &lunakit::ops::detail::label_components_cpu); }
