"""lunakit.evaluation: LUNA16 FROC rules on hand-computed cases, against a slow reference written
from the official script's loop, on the real LUNA16 tables, and the book's confusion table."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from lunakit.cli import main as lunakit_main
from lunakit.errors import LunakitError, TableError
from lunakit.evaluation import (
    FP_RATES,
    AnnotationTable,
    CandidateTable,
    bootstrap_cpm,
    classification_confusion,
    froc,
    plot_froc,
    read_annotations_table,
    read_candidates_table,
    read_series_list,
    sensitivity_at,
)

from helpers import require

ANN_HEADER = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
CAND_HEADER = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
FAR = 1000.0  # a coordinate far from every annotation of the hand-made cases


# ---------------------------------------------------------------------------
# helpers


def write_csv(path: Path, header: list[str], rows, order: list[int] | None = None) -> Path:
    """A CSV with `header`; `order` permutes the columns (header and rows alike)."""
    order = order if order is not None else list(range(len(header)))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([header[k] for k in order])
        for row in rows:
            w.writerow([row[k] for k in order])
    return path


def write_series(path: Path, uids: list[str]) -> Path:
    path.write_text("".join(u + "\n" for u in uids))
    return path


def make_case(tmp_path: Path, series, nodules=(), excluded=(), candidates=(), order=None):
    """Write the four tables of a case and read them back: (annotations, excluded, series, candidates)."""
    a = write_csv(tmp_path / "annotations.csv", ANN_HEADER, nodules, order)
    e = write_csv(tmp_path / "excluded.csv", ANN_HEADER, excluded, order)
    s = write_series(tmp_path / "series.csv", list(series))
    c = write_csv(tmp_path / "candidates.csv", CAND_HEADER, candidates, order)
    return read_annotations_table(a), read_annotations_table(e), read_series_list(s), read_candidates_table(c)


def run_case(tmp_path: Path, series, nodules=(), excluded=(), candidates=(), order=None):
    return froc(*make_case(tmp_path, series, nodules, excluded, candidates, order))


def far_fp(uid: str, k: int, score: float) -> tuple:
    """A false positive: far from everything, each one at its own place."""
    return (uid, FAR + k, FAR, FAR, score)


# ---------------------------------------------------------------------------
# hand-computed cases (n = scans, N = nodules; a curve point is (FPs per scan, sensitivity))


def test_candidate_exactly_on_the_radius_is_a_miss(tmp_path):
    # nodule at the origin, diameter 10: radius^2 = 25. A candidate at (3, 4, 0) has
    # squared distance 9 + 16 = 25, not < 25: a false positive, the nodule is missed.
    r = run_case(tmp_path, ["A"], [("A", 0, 0, 0, 10)], [], [("A", 3, 4, 0, 0.9)])
    assert (r.n_hit_nodules, r.n_false_positives) == (0, 1)
    assert r.sensitivities == (0.0,) * 7 and r.cpm == 0.0
    # just inside: (3, 3.99, 0) -> 9 + 15.9201 < 25: a hit, curve (0,0) (0,1): 1.0 everywhere
    r = run_case(tmp_path, ["A"], [("A", 0, 0, 0, 10)], [], [("A", 3, 3.99, 0, 0.9)])
    assert (r.n_hit_nodules, r.n_false_positives) == (1, 0)
    assert r.sensitivities == (1.0,) * 7 and r.cpm == 1.0


@pytest.mark.parametrize(
    "n_tied_fps, n_candidates, n_kept, n_hit",
    [
        # 98 FPs scoring 0.60..0.697 + the hit at 0.5 + 3 FPs at 0.5 = 102 candidates.
        # 101st-highest score (index 100 of the descending list) = 0.5; keep > 0.5: the 98.
        (3, 102, 98, 0),
        # 101 candidates: descending, indices 98, 99, 100 are the three 0.5s: cut 0.5, keep the 98.
        (2, 101, 98, 0),
        # 100 candidates: no cut at all, the hit at 0.5 stays.
        (1, 100, 100, 1),
    ],
)
def test_ties_at_the_100_candidate_cut_are_dropped(tmp_path, n_tied_fps, n_candidates, n_kept, n_hit):
    cands = [far_fp("A", k, 0.6 + 0.001 * k) for k in range(98)]
    cands.append(("A", 1, 0, 0, 0.5))  # on the nodule
    cands += [far_fp("A", 200 + k, 0.5) for k in range(n_tied_fps)]
    r = run_case(tmp_path, ["A"], [("A", 0, 0, 0, 10)], [], cands)
    assert r.n_candidates == n_candidates
    assert r.n_candidates_kept == n_kept
    assert r.n_hit_nodules == n_hit
    assert r.n_false_positives == n_kept - n_hit


def test_candidate_on_an_excluded_finding_is_ignored(tmp_path):
    # scans A, B (n = 2); nodules N in A (d 6) and M in B (N = 2).
    # excluded finding in A at (50,50,50) with diameter -1 -> 10 mm, radius^2 25.
    # A's candidates: (0,0,1) p .8 hits N; (50,50,54) p .9 at squared distance 16 < 25 -> ignored;
    # (100,0,0) p .7 is a false positive. A candidate on N and on an excluded finding in B
    # (B's nodule M at (10,10,10) d 4, excluded at the same place) counts as a hit: p .2.
    # Entries: TP .8, FP .7, TP .2 -> points (0,0) (0,.5) (.5,.5) (.5,1).
    # Rates: 1/8, 1/4 -> .5 ; 1/2 -> upper value 1 ; 1..8 -> 1. CPM = (.5 + .5 + 5) / 7 = 6/7.
    # (Were the ignored mark a FP at .9: (.5,0) first, and 1/8, 1/4 would read 0.)
    nodules = [("A", 0, 0, 0, 6), ("B", 10, 10, 10, 4)]
    excluded = [("A", 50, 50, 50, -1), ("B", 10, 10, 10, -1)]
    cands = [("A", 0, 0, 1, 0.8), ("A", 50, 50, 54, 0.9), ("A", 100, 0, 0, 0.7), ("B", 10, 10, 10.5, 0.2)]
    r = run_case(tmp_path, ["A", "B"], nodules, excluded, cands)
    assert r.n_ignored_irrelevant == 1
    assert (r.n_hit_nodules, r.n_false_positives) == (2, 1)
    np.testing.assert_allclose(r.sensitivities, [0.5, 0.5, 1, 1, 1, 1, 1])
    assert r.cpm == pytest.approx(6 / 7)


def test_two_hits_on_one_nodule_count_once_with_the_highest_score(tmp_path):
    # n = 1, N = 1 (origin, d 10). Hits h1 p .9 and h2 p .3; FPs f1 p .95 and f2 p .5.
    # h2 is ignored (not a FP); the nodule scores .9. Entries: FP .95, TP .9, FP .5:
    # points (0,0) (1,0) (1,1) (2,1). Rates 1/8..1/2 -> 0; 1 -> upper value 1; 2..8 -> 1. CPM 4/7.
    # (With the lowest hit's score, .3: (1,0) (2,0) (2,1) -> 1 would read 0.)
    cands = [("A", 1, 0, 0, 0.9), ("A", 0, 1, 0, 0.3), far_fp("A", 0, 0.95), far_fp("A", 1, 0.5)]
    r = run_case(tmp_path, ["A"], [("A", 0, 0, 0, 10)], [], cands)
    assert (r.n_hit_nodules, r.n_false_positives, r.n_extra_hits) == (1, 2, 1)
    assert r.sensitivities == (0, 0, 0, 1, 1, 1, 1)
    assert r.cpm == pytest.approx(4 / 7)


def test_scan_without_candidates_and_scan_without_nodules(tmp_path):
    # n = 3: A (nodule, hit at .9), B (nodule, no candidate: a miss), C (no nodule,
    # FPs .99 .97 .95 .1). N = 2. Entries: FP .99 .97 .95, TP .9, FP .1:
    # points (0,0) (1/3,0) (2/3,0) (1,0) (1,.5) (4/3,.5). Rates 1/8..1/2 -> 0; 1 -> .5; 2..8 -> .5.
    # CPM = 4 x .5 / 7 = 2/7. (Without B's miss: 1 instead of .5; with n = 2: the step at 1.5, rate 1 -> 0.)
    nodules = [("A", 0, 0, 0, 10), ("B", 0, 0, 0, 10)]
    cands = [("A", 0, 0, 0, 0.9)] + [far_fp("C", k, p) for k, p in enumerate([0.99, 0.97, 0.95, 0.1])]
    r = run_case(tmp_path, ["A", "B", "C"], nodules, [], cands)
    assert (r.n_scans, r.n_nodules, r.n_hit_nodules, r.n_false_positives) == (3, 2, 1, 4)
    np.testing.assert_allclose(r.sensitivities, [0, 0, 0, 0.5, 0.5, 0.5, 0.5])
    assert r.cpm == pytest.approx(2 / 7)


def test_repeated_series_row_counts_the_scan_twice(tmp_path):
    # series rows A, A, B (n = 3). A: nodule hit at .9, FP .8; B: nodule missed, FP .95.
    # The official loop visits A twice: N = 2 + 1 = 3, entries TP .9 x2, FP .8 x2, FP .95.
    # Points (0,0) (1/3,0) (1/3,2/3) (1,2/3). 1/8, 1/4 -> 0; 1/2 -> 2/3; 1..8 -> 2/3. CPM = 10/21.
    nodules = [("A", 0, 0, 0, 10), ("B", 0, 0, 0, 10)]
    cands = [("A", 0, 0, 0, 0.9), far_fp("A", 0, 0.8), far_fp("B", 0, 0.95)]
    r = run_case(tmp_path, ["A", "A", "B"], nodules, [], cands)
    assert (r.n_scans, r.n_nodules, r.n_hit_nodules, r.n_false_positives) == (3, 3, 2, 3)
    np.testing.assert_allclose(r.sensitivities, [0, 0, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert r.cpm == pytest.approx(10 / 21)


def test_one_candidate_hits_two_overlapping_nodules(tmp_path):
    # N1 at the origin, N2 at (4,0,0), both d 10. A candidate at (2,0,0) p .7: squared
    # distance 4 < 25 to both -> both hit. FP at .9. n = 1, N = 2. Entries FP .9, TP .7 x2:
    # points (1,0) (1,1): 1/8..1/2 -> 0; 1..8 -> 1. CPM 4/7. (One hit only: 0.5 instead of 1.)
    nodules = [("A", 0, 0, 0, 10), ("A", 4, 0, 0, 10)]
    r = run_case(tmp_path, ["A"], nodules, [], [("A", 2, 0, 0, 0.7), far_fp("A", 0, 0.9)])
    assert (r.n_hit_nodules, r.n_false_positives) == (2, 1)
    assert r.sensitivities == (0, 0, 0, 1, 1, 1, 1)


def test_negative_diameter_counts_as_10_mm(tmp_path):
    # nodule d -1 -> 10 mm, radius^2 25: (0,0,4.9) at 24.01 hits (p .5); (0,0,-5) at 25 misses (FP .6).
    # Entries FP .6, TP .5 -> (1,0) (1,1): 0, 0, 0, 1, 1, 1, 1.
    cands = [("A", 0, 0, 4.9, 0.5), ("A", 0, 0, -5, 0.6)]
    r = run_case(tmp_path, ["A"], [("A", 0, 0, 0, -1)], [], cands)
    assert (r.n_hit_nodules, r.n_false_positives) == (1, 1)
    assert r.sensitivities == (0, 0, 0, 1, 1, 1, 1)


def test_interpolation_on_a_slope_and_at_a_vertical_step(tmp_path):
    # n = 8 scans A..H; nodules in A and B (N = 2). C: FP .9. A: hit .8 and FP .8 (tie);
    # D: FP .8 (tie); B: hit .3. Points: (0,0) (1/8,0) [.9] (3/8,.5) [.8: 1 TP, 2 FP] (3/8,1) [.3].
    # 1/8 -> 0; 1/4 on the slope from (1/8,0) to (3/8,.5): .5 * (1/8)/(2/8) = .25; 1/2.. past the end -> 1.
    series = list("ABCDEFGH")
    nodules = [("A", 0, 0, 0, 10), ("B", 0, 0, 0, 10)]
    cands = [far_fp("C", 0, 0.9), ("A", 0, 0, 0, 0.8), far_fp("A", 0, 0.8), far_fp("D", 0, 0.8), ("B", 0, 0, 0, 0.3)]
    r = run_case(tmp_path, series, nodules, [], cands)
    np.testing.assert_allclose(r.sensitivities, [0, 0.25, 1, 1, 1, 1, 1])
    assert r.cpm == pytest.approx(5.25 / 7)
    np.testing.assert_allclose(r.fp_per_scan, [0, 1 / 8, 3 / 8, 3 / 8])
    np.testing.assert_allclose(r.sensitivity, [0, 0, 0.5, 1])


def test_sensitivity_at_matches_numpy_interp():
    # curve with vertical steps at 0 and 1: 1/8 -> .2 + .2 * 1/8 = .225; 1/4 -> .25; 1/2 -> .3;
    # 1 -> upper value .6; 2 -> .6 + .4 * 1/2 = .8; 4, 8 -> past the end, 1.
    fps = np.array([0, 0, 1, 1, 3.0])
    sens = np.array([0, 0.2, 0.4, 0.6, 1.0])
    got = sensitivity_at(fps, sens, FP_RATES)
    np.testing.assert_allclose(got, [0.225, 0.25, 0.3, 0.6, 0.8, 1, 1])
    np.testing.assert_allclose(got, np.interp(FP_RATES, fps, sens))


def test_columns_in_any_order(tmp_path):
    # the two-hits case again, every table's columns shuffled and an extra column added
    header_extra = ["note"]
    cands = [("A", 1, 0, 0, 0.9), ("A", 0, 1, 0, 0.3), far_fp("A", 0, 0.95), far_fp("A", 1, 0.5)]
    cands = [row + ("x",) for row in cands]
    order = [4, 2, 5, 0, 3, 1]
    a = write_csv(tmp_path / "a.csv", ANN_HEADER + header_extra, [("A", 0, 0, 0, 10, "x")], order)
    e = write_csv(tmp_path / "e.csv", ANN_HEADER + header_extra, [], order)
    c = write_csv(tmp_path / "c.csv", CAND_HEADER + header_extra, cands, order)
    assert c.read_text().splitlines()[0] == "probability,coordY,note,seriesuid,coordZ,coordX"
    r = froc(read_annotations_table(a), read_annotations_table(e), ["A"], read_candidates_table(c))
    assert r.sensitivities == (0, 0, 0, 1, 1, 1, 1)
    table = read_candidates_table(c)
    np.testing.assert_array_equal(table.center_xyz[0], [1, 0, 0])
    assert table.probability[0] == 0.9 and table.seriesuid[0] == "A"


def test_in_memory_tables_give_the_same_result(tmp_path):
    ann, exc, series, cands = make_case(
        tmp_path, ["A"], [("A", 0, 0, 0, 10)], [], [("A", 1, 0, 0, 0.9), far_fp("A", 0, 0.95)]
    )
    mem = CandidateTable.build(["A", "A"], [[1, 0, 0], [FAR, FAR, FAR]], [0.9, 0.95])
    nod = AnnotationTable.build(["A"], [[0, 0, 0]], [10])
    assert froc(nod, exc, series, mem).sensitivities == froc(ann, exc, series, cands).sensitivities


# ---------------------------------------------------------------------------
# a slow reference written from the official script's loop, on random cases


def official_reference(nodules, excluded, series, candidates) -> np.ndarray:
    """Sensitivities at the 7 rates the way the official script gets them: its per-scan loop,
    a ROC over all FROC items, numpy.interp. Plain Python; rows are tuples as written to the CSVs."""
    marks = {}
    for uid in series:
        mine = [c for c in candidates if c[0] == uid]
        if len(mine) > 100:
            cut = sorted((c[4] for c in mine), reverse=True)[100]
            mine = [c for c in mine if c[4] > cut]
        marks[uid] = mine
    labels, scores, n_lesions = [], [], 0
    for uid in series:  # a repeated row is visited again
        remaining = list(range(len(marks[uid])))
        findings = [(n, True) for n in nodules if n[0] == uid] + [(n, False) for n in excluded if n[0] == uid]
        for ann, included in findings:
            diameter = ann[4] if ann[4] >= 0 else 10.0
            hit_scores = []
            for k, c in enumerate(marks[uid]):
                d2 = (ann[1] - c[1]) ** 2 + (ann[2] - c[2]) ** 2 + (ann[3] - c[3]) ** 2
                if d2 < (diameter / 2) ** 2:
                    if included:
                        hit_scores.append(c[4])
                    if k in remaining:
                        remaining.remove(k)
            if included:
                n_lesions += 1
                if hit_scores:
                    labels.append(1)
                    scores.append(max(hit_scores))
        for k in remaining:
            labels.append(0)
            scores.append(marks[uid][k][4])
    # roc_curve's fractions (count / all), scaled back as the script scales them
    all_fp, all_tp = labels.count(0), labels.count(1)
    fps, sens = [0.0], [0.0]
    for t in sorted(set(scores), reverse=True):
        fp = sum(1 for label, s in zip(labels, scores) if s >= t and label == 0)
        tp = sum(1 for label, s in zip(labels, scores) if s >= t and label == 1)
        fps.append((fp / all_fp) * all_fp / len(series) if all_fp else 0.0)
        sens.append((tp / all_tp) * all_tp / n_lesions if all_tp else 0.0)
    return np.interp(FP_RATES, fps, sens)


def random_case(rng: np.random.Generator):
    uids = [f"1.2.{k}" for k in range(6)]
    series = uids[:5] + [uids[0], uids[2]]  # uids[5] is not listed (its annotations are ignored)
    nodules, excluded, candidates = [], [], []
    for uid in uids:
        for _ in range(rng.integers(0, 4)):
            xyz = rng.uniform(-20, 20, 3).round(1)
            nodules.append((uid, *xyz, float(rng.choice([-1.0, 4.0, 8.0, 12.0]))))
        for _ in range(rng.integers(0, 4)):
            xyz = rng.uniform(-20, 20, 3).round(1)
            excluded.append((uid, *xyz, float(rng.choice([-1.0, 3.0, 6.0]))))
    for uid in uids[:5]:
        n = int(rng.choice([0, 5, 40, 101, 130]))
        for _ in range(n):
            xyz = rng.uniform(-25, 25, 3).round(1)
            candidates.append((uid, *xyz, float(rng.integers(0, 20)) / 20))  # many ties
    return series, nodules, excluded, candidates


@pytest.mark.parametrize("seed", range(12))
def test_matches_the_official_loop_on_random_cases(tmp_path, seed):
    series, nodules, excluded, candidates = random_case(np.random.default_rng(seed))
    if not any(n[0] in series for n in nodules):
        nodules.append((series[0], 0.0, 0.0, 0.0, 5.0))
    r = run_case(tmp_path, series, nodules, excluded, candidates)
    np.testing.assert_allclose(r.sensitivities, official_reference(nodules, excluded, series, candidates), atol=1e-12)
    assert r.n_scans == len(series)


# ---------------------------------------------------------------------------
# bootstrap


def test_bootstrap_resamples_scans_like_froc_on_a_drawn_series(tmp_path):
    # reference: draw the series rows with the same generator, evaluate the drawn list with froc
    # (a row drawn twice is a scan listed twice), redraw samples without nodules, take the
    # official order statistics of 50 samples: sorted[floor(.025 * 50)] = [1], [floor(.975 * 50)] = [48].
    series, nodules, excluded, candidates = random_case(np.random.default_rng(5))
    ann, exc, series_list, cands = make_case(tmp_path, series, nodules, excluded, candidates)
    rng = np.random.default_rng(7)
    cpms = []
    while len(cpms) < 50:
        drawn = [series_list[k] for k in rng.integers(len(series_list), size=len(series_list))]
        try:
            cpms.append(froc(ann, exc, drawn, cands).cpm)
        except LunakitError:  # no nodule in the drawn scans
            continue
    cpms.sort()
    lo, hi = bootstrap_cpm(ann, exc, series_list, cands, n_samples=50, seed=7)
    assert (lo, hi) == pytest.approx((cpms[1], cpms[48]), abs=1e-12)
    assert lo <= hi


def test_bootstrap_is_seeded_and_rejects_bad_sample_counts(tmp_path):
    series, nodules, excluded, candidates = random_case(np.random.default_rng(3))
    case = make_case(tmp_path, series, nodules, excluded, candidates)
    assert bootstrap_cpm(*case, n_samples=40, seed=1) == bootstrap_cpm(*case, n_samples=40, seed=1)
    with pytest.raises(LunakitError, match="n_samples"):
        bootstrap_cpm(*case, n_samples=0)


# ---------------------------------------------------------------------------
# bad input


def test_bad_tables_raise_naming_file_and_line(tmp_path):
    def cands(text: str) -> Path:
        p = tmp_path / "cands.csv"
        p.write_text(text)
        return p

    header = "seriesuid,coordX,coordY,coordZ,probability\n"
    with pytest.raises(TableError, match=r"cands\.csv: missing column\(s\) probability"):
        read_candidates_table(cands("seriesuid,coordX,coordY,coordZ,score\nA,0,0,0,1\n"))
    with pytest.raises(TableError, match=r"cands\.csv: line 3: coordY is nan"):
        read_candidates_table(cands(header + "A,0,0,0,1\nA,1,nan,2,0.5\n"))
    with pytest.raises(TableError, match=r"cands\.csv: line 2: coordZ 'abc' is not a number"):
        read_candidates_table(cands(header + "A,0,0,abc,1\n"))
    with pytest.raises(TableError, match=r"cands\.csv: line 2: probability is inf"):
        read_candidates_table(cands(header + "A,0,0,0,inf\n"))
    with pytest.raises(TableError, match=r"cands\.csv: line 2: 3 fields"):
        read_candidates_table(cands(header + "A,0,0\n"))
    with pytest.raises(TableError, match=r"cands\.csv: line 2: empty seriesuid"):
        read_candidates_table(cands(header + ",0,0,0,1\n"))
    with pytest.raises(TableError, match=r"cands\.csv: empty file"):
        read_candidates_table(cands(""))
    with pytest.raises(TableError, match=r"nope\.csv: no such file"):
        read_annotations_table(tmp_path / "nope.csv")
    with pytest.raises(TableError, match="missing column"):
        read_annotations_table(cands("seriesuid,coordX,coordY,coordZ\nA,0,0,0\n"))
    with pytest.raises(TableError, match="is a directory"):
        read_series_list(tmp_path)


def test_bad_series_lists(tmp_path):
    p = tmp_path / "series.csv"
    p.write_text("\n\n")
    with pytest.raises(TableError, match="series list is empty"):
        read_series_list(p)
    p.write_text("seriesuid\nA\n")
    with pytest.raises(TableError, match="line 1: the series list has no header"):
        read_series_list(p)
    p.write_text("A\n\nB\nA\n")  # blank lines skipped, repeats kept
    assert read_series_list(p) == ["A", "B", "A"]


def test_candidates_of_a_scan_not_in_the_series_list_are_ignored(tmp_path):
    # the official script drops them: same curve as without them, and they are counted
    (tmp_path / "z").mkdir()
    (tmp_path / "no-z").mkdir()
    listed = [("A", 0, 0, 0, 0.5), far_fp("A", 0, 0.7)]
    unlisted = [("Z", 0, 0, 0, 0.9), far_fp("Z", 1, 0.6)]
    with_z = run_case(tmp_path / "z", ["A", "B"], [("A", 0, 0, 0, 10), ("Z", 0, 0, 0, 10)], [], listed + unlisted)
    without = run_case(tmp_path / "no-z", ["A", "B"], [("A", 0, 0, 0, 10)], [], listed)
    assert with_z.sensitivities == without.sensitivities == (0, 0, 1, 1, 1, 1, 1)  # FP at 1/2, then the hit
    assert with_z.n_unlisted_candidates == 2 and without.n_unlisted_candidates == 0
    assert with_z.n_candidates == without.n_candidates == 2 and with_z.n_nodules == 1


# 10 scans, one hit before any false positive, then one hit right after false positive number
# 5, 10, 20 and 40, i.e. TP steps exactly at 0.5, 1, 2 and 4 FPs per scan. The official script
# computes (k / n_fp) * n_fp / 10, which for n_fp = 147 lands one ulp above k / 10 (the read-out
# at the rate then takes the step's lower side), for n_fp = 77 one ulp below and for n_fp = 100
# exactly on it (both: the upper side). 1/8 and 1/4 lie on the flat stretch after the first hit.
@pytest.mark.parametrize(
    "n_fp, expected",
    [
        (147, [1 / 5, 1 / 5, 1 / 5, 2 / 5, 3 / 5, 4 / 5, 1]),
        (77, [1 / 5, 1 / 5, 2 / 5, 3 / 5, 4 / 5, 1, 1]),
        (100, [1 / 5, 1 / 5, 2 / 5, 3 / 5, 4 / 5, 1, 1]),
    ],
)
def test_steps_exactly_on_the_rates_fall_on_the_official_side(tmp_path, n_fp, expected):
    assert ((5 / n_fp) * n_fp / 10 > 0.5) == (n_fp == 147)  # the premise, in the script's order
    series = [f"S{k}" for k in range(10)]
    nodules = [(series[k], 0, 0, 0, 10) for k in range(5)]
    hit_after = {0: 0, 5: 1, 10: 2, 20: 3, 40: 4}  # FPs before the hit -> its nodule
    cands, score = [], 1.0
    for k in range(n_fp + 1):
        if k in hit_after:
            cands.append((series[hit_after[k]], 0, 0, 0, score))
            score -= 1e-3
        if k < n_fp:
            cands.append(far_fp(series[k % 10], k, score))
            score -= 1e-3
    r = run_case(tmp_path, series, nodules, [], cands)
    assert r.n_false_positives == n_fp and r.n_hit_nodules == 5
    np.testing.assert_allclose(r.sensitivities, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(official_reference(nodules, [], series, cands), expected, rtol=0, atol=1e-12)


def test_no_nodules_in_the_listed_scans(tmp_path):
    case = make_case(tmp_path, ["A"], [("B", 0, 0, 0, 10)], [], [("A", 0, 0, 0, 0.5)])
    with pytest.raises(LunakitError, match="no nodule"):
        froc(*case)


def test_in_memory_tables_are_checked():
    with pytest.raises(TableError, match="row 2: center_xyz is not finite"):
        CandidateTable.build(["A", "A"], [[0, 0, 0], [0, np.nan, 0]], [0.1, 0.2])
    with pytest.raises(TableError, match="expected \\(2, 3\\)"):
        CandidateTable.build(["A", "A"], [[0, 0, 0]], [0.1, 0.2])
    with pytest.raises(TableError, match="diameter_mm has 2 values"):
        AnnotationTable.build(["A"], [[0, 0, 0]], [1, 2])


# ---------------------------------------------------------------------------
# the CLI


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`lunakit ARGV`: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = lunakit_main(argv)
    return code, out.getvalue(), err.getvalue()


def case_files(tmp_path: Path, candidates) -> list[str]:
    # the "scan without candidates" case: sensitivities 0, 0, 0, .5, .5, .5, .5
    write_csv(tmp_path / "a.csv", ANN_HEADER, [("A", 0, 0, 0, 10), ("B", 0, 0, 0, 10)])
    write_csv(tmp_path / "e.csv", ANN_HEADER, [])
    write_series(tmp_path / "s.csv", ["A", "B", "C"])
    write_csv(tmp_path / "c.csv", CAND_HEADER, candidates)
    return [
        "evaluate",
        "--annotations",
        str(tmp_path / "a.csv"),
        "--excluded",
        str(tmp_path / "e.csv"),
        "--series",
        str(tmp_path / "s.csv"),
        "--candidates",
        str(tmp_path / "c.csv"),
    ]


HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
GOOD_CANDIDATES = [("A", 0, 0, 0, 0.9)] + [far_fp("C", k, p) for k, p in enumerate([0.99, 0.97, 0.95, 0.1])]


def test_cli_json(tmp_path):
    code, out, err = run_cli(case_files(tmp_path, GOOD_CANDIDATES) + ["--json", "--bootstrap", "30", "--seed", "2"])
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert set(doc) == {"fp_rates", "sensitivities", "cpm", "cpm_ci", "n_scans", "n_nodules"}
    assert doc["fp_rates"] == list(FP_RATES)
    np.testing.assert_allclose(doc["sensitivities"], [0, 0, 0, 0.5, 0.5, 0.5, 0.5])
    assert doc["cpm"] == pytest.approx(2 / 7)
    assert (doc["n_scans"], doc["n_nodules"]) == (3, 2)
    lo, hi = doc["cpm_ci"]
    assert 0.0 <= lo <= hi <= 1.0


def test_cli_table_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "froc.png"
    code, out, err = run_cli(case_files(tmp_path, GOOD_CANDIDATES) + ["--plot", str(plot), "--bootstrap", "0"])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("LUNA16 FROC: 3 scans, 2 nodules (1 hit), 4 false positives")
    expected = [0, 0, 0, 0.5, 0.5, 0.5, 0.5]
    assert [line.split() for line in lines[2:9]] == [[f"{r:.3f}", f"{s:.4f}"] for r, s in zip(FP_RATES, expected)]
    assert lines[9] == f"CPM {2 / 7:.4f}"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".froc")] == []  # no temporary left


@pytest.mark.parametrize(
    "candidates, extra, message",
    [
        (GOOD_CANDIDATES + [("A", "nan", 0, 0, 0.5)], [], "coordX is nan"),
        (GOOD_CANDIDATES, ["--bootstrap", "-1"], "--bootstrap"),
        (GOOD_CANDIDATES, ["--plot", "/nonexistent-folder/froc.png"], "does not exist"),
        (GOOD_CANDIDATES, ["--plot", "froc.txt"], "plot file must end in"),
    ],
)
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, candidates, extra, message):
    plot = tmp_path / "out" / "froc.png"
    plot.parent.mkdir()
    argv = case_files(tmp_path, candidates) + extra
    if "--plot" not in extra and HAVE_MATPLOTLIB:  # without it, --plot itself is the error
        argv += ["--plot", str(plot)]
    code, out, err = run_cli(argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err
    assert list(plot.parent.iterdir()) == []


def test_cli_says_once_how_many_unlisted_candidates_it_ignored(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "z").mkdir()
    code, out, err = run_cli(case_files(tmp_path / "plain", GOOD_CANDIDATES) + ["--json"])
    assert code == 0 and err == ""
    code_z, out_z, err_z = run_cli(case_files(tmp_path / "z", GOOD_CANDIDATES + [("Z", 0, 0, 0, 0.5)] * 3) + ["--json"])
    assert code_z == 0 and out_z == out
    assert len(err_z.strip().splitlines()) == 1 and "3 candidate row(s) of scans not in" in err_z


def test_plot_without_matplotlib_names_the_package(tmp_path, monkeypatch):
    r = run_case(tmp_path, ["A"], [("A", 0, 0, 0, 10)], [], [("A", 0, 0, 0, 0.9)])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(LunakitError, match="pip install matplotlib"):
        plot_froc(r, tmp_path / "froc.png")
    assert not (tmp_path / "froc.png").exists()
    plot = tmp_path / "cli" / "froc.png"
    plot.parent.mkdir()
    code, out, err = run_cli(case_files(tmp_path / "cli", GOOD_CANDIDATES) + ["--plot", str(plot)])
    assert code == 2 and out == "" and "pip install matplotlib" in err
    assert not plot.exists()


# ---------------------------------------------------------------------------
# the real LUNA16 tables


def luna_tables(test_data: Path):
    luna = test_data / "luna"
    ann = read_annotations_table(require(luna / "annotations.csv"))
    exc = read_annotations_table(require(luna / "annotations_excluded.csv"))
    series = read_series_list(require(luna / "seriesuids.csv"))
    return ann, exc, series


def test_real_tables_annotation_centers_score_everything(test_data):
    ann, exc, series = luna_tables(test_data)
    with open(test_data / "luna" / "annotations.csv") as f:
        rows = list(csv.DictReader(f))
    assert (len(ann), len(exc), len(series)) == (len(rows), 35192, 888)
    # every annotation center as a candidate with score 1: each hits its own nodule (distance 0),
    # nothing else is a candidate: no false positive, sensitivity 1 at every rate, CPM 1.
    cands = CandidateTable.build(
        [r["seriesuid"] for r in rows],
        [[float(r[k]) for k in ("coordX", "coordY", "coordZ")] for r in rows],
        [1.0] * len(rows),
    )
    r = froc(ann, exc, series, cands)
    assert (r.n_scans, r.n_nodules, r.n_hit_nodules, r.n_false_positives) == (888, 1186, 1186, 0)
    assert r.sensitivities == (1.0,) * 7 and r.cpm == 1.0
    assert bootstrap_cpm(ann, exc, series, cands, n_samples=20) == (1.0, 1.0)


def test_real_tables_with_scans_removed(test_data, tmp_path):
    ann, exc, series = luna_tables(test_data)
    with open(test_data / "luna" / "annotations.csv") as f:
        rows = list(csv.DictReader(f))
    # drop every candidate of the first 100 scans of the series list: their nodules can only be
    # hit by candidates of their own scan, so exactly those are missed. Add one far false positive
    # per scan at score .5: curve (0,0) (0,S) (1,S), S = 1 - missed / 1186, read S everywhere.
    dropped = set(series[:100])
    missed = sum(1 for r in rows if r["seriesuid"] in dropped)
    assert 0 < missed < len(rows)
    kept = [r for r in rows if r["seriesuid"] not in dropped]
    path = write_csv(
        tmp_path / "cands.csv",
        CAND_HEADER,
        [(r["seriesuid"], r["coordX"], r["coordY"], r["coordZ"], 1.0) for r in kept]
        + [(uid, 1e4, 1e4, 1e4, 0.5) for uid in series],
    )
    r = froc(ann, exc, series, read_candidates_table(path))
    expected = (len(rows) - missed) / len(rows)
    assert (r.n_hit_nodules, r.n_false_positives) == (len(rows) - missed, 888)
    np.testing.assert_allclose(r.sensitivities, [expected] * 7)
    assert r.cpm == pytest.approx(expected)
    np.testing.assert_allclose(r.fp_per_scan[-1], 1.0)


# ---------------------------------------------------------------------------
# the book's confusion table


def test_confusion_hand_computed():
    # match radius 0.7 x 10 mm = 7 mm (0.7 * 10 == 7.0 exactly in floating point).
    truth = [
        ((0, 0, 0), 10, True, False),  # Nb: f1 (5 mm, benign) and f2 (6.9 mm, filtered) -> benign
        ((10, 0, 0), 10, True, False),  # Nb2: f1 (5 mm, benign) -> benign
        ((100, 0, 0), 10, True, True),  # Nm: f3 (6 mm, malignant) -> malignant
        ((200, 0, 0), 10, True, True),  # Nm2: f4 at exactly 7 mm does not match -> complete miss
        ((50, 50, 50), 0, False, False),  # a non-nodule candidate: defines no match
    ]
    findings = [
        ((5, 0, 0), 0.9, 0.2),  # f1 benign
        ((0, 6.9, 0), 0.3, 0.9),  # f2 filtered out (p_nodule < .5)
        ((100, 0, 6), 0.8, 0.7),  # f3 malignant
        ((207, 0, 0), 0.9, 0.9),  # f4 malignant, matches nothing -> non-nodule row
        ((50, 50, 50), 0.5, None),  # f5 p_nodule at the threshold counts; no malignancy model -> benign
        ((300, 300, 300), 0.1, 0.1),  # f6 filtered out, matches nothing
    ]
    expected = np.array(
        [
            [0, 1, 1, 1],  # non-nodule: f6 filtered, f5 benign, f4 malignant
            [0, 0, 2, 0],  # benign: Nb, Nb2
            [1, 0, 0, 1],  # malignant: Nm2 missed, Nm
        ]
    )
    np.testing.assert_array_equal(classification_confusion(truth, findings), expected)
    # stricter thresholds: f3 (p_mal .7) becomes benign, f1 (p_nodule .9) stays
    got = classification_confusion(truth, findings, nodule_threshold=0.85, malignancy_threshold=0.95)
    # f3 .8 < .85 filtered; f4 .9 benign; f5 .5 filtered; f6 filtered
    np.testing.assert_array_equal(got, [[0, 2, 1, 0], [0, 0, 2, 0], [1, 1, 0, 0]])


def test_confusion_empty_sides_and_bad_entries():
    truth = [((0, 0, 0), 10, True, True), ((9, 9, 9), 6, True, False)]
    np.testing.assert_array_equal(classification_confusion(truth, []), [[0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(
        classification_confusion([], [((0, 0, 0), 0.9, 0.1), ((1, 1, 1), 0.2, 0.9)]), [[0, 1, 1, 0], [0] * 4, [0] * 4]
    )
    with pytest.raises(LunakitError, match="finding 0"):
        classification_confusion(truth, [((0, 0, math.nan), 0.9, 0.1)])
    with pytest.raises(LunakitError, match="truth entry 1"):
        classification_confusion([truth[0], ((0, 0), 5, True, False)], [])
