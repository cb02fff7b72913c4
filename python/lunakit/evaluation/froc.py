"""FROC and CPM by the rules of the LUNA16 challenge's official evaluation script.

The rules, in the order they apply (docs/evaluation.md explains each):

1. Scans are the rows of the series list; a UID listed twice is two scans (its
   nodules and candidates count twice, as the official script's loop counts them).
   Candidates of scans not in the list are ignored (counted in n_unlisted_candidates).
2. Per scan, when there are more than 100 candidates, keep those scoring strictly
   above the 101st-highest score: at most 100, ties at the cut dropped.
3. A candidate hits an annotation when its squared distance to the center is
   strictly below (diameter / 2)^2; a negative diameter counts as 10 mm.
4. A candidate that hits a nodule is a true positive for every nodule it hits
   (overlapping nodules); a nodule's score is the highest score among its hits,
   further hits are ignored. A candidate that hits no nodule but an irrelevant
   finding is ignored. Every other candidate is a false positive.
5. The curve: for each distinct score t (high to low), sensitivity = hit nodules
   scoring >= t / all nodules (never-hit nodules are misses), false positives per
   scan = false positives scoring >= t / number of scans; it starts at (0, 0).
   Both divisions go in the official script's floating-point order (_curve).
6. Sensitivity at 1/8, 1/4, 1/2, 1, 2, 4, 8 false positives per scan by linear
   interpolation (numpy.interp); at a vertical step the upper value, past the end
   the last one. A step exactly on a rate lands on whichever side the official
   order of rule 5 puts it.
   CPM is the mean of those seven.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from lunakit.errors import LunakitError
from lunakit.evaluation.tables import AnnotationTable, CandidateTable

__all__ = [
    "DEFAULT_DIAMETER_MM",
    "FP_RATES",
    "MAX_MARKS_PER_SCAN",
    "FrocResult",
    "bootstrap_cpm",
    "froc",
    "froc_with_interval",
    "sensitivity_at",
]

FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
MAX_MARKS_PER_SCAN = 100
DEFAULT_DIAMETER_MM = 10.0  # what an annotation with a negative diameter counts as


@dataclass(frozen=True, eq=False)
class FrocResult:
    """The FROC curve, its sensitivities at the seven LUNA16 rates, the CPM, and what was counted.

    Counts are over scan rows: a scan listed twice contributes twice.
    """

    fp_per_scan: np.ndarray  # (P,) curve x, non-decreasing, starts at 0
    sensitivity: np.ndarray  # (P,) curve y, non-decreasing, starts at 0
    thresholds: np.ndarray  # (P,) score at each curve point (+inf at the origin)
    fp_rates: tuple[float, ...]
    sensitivities: tuple[float, ...]
    cpm: float
    n_scans: int
    n_nodules: int
    n_hit_nodules: int
    n_false_positives: int
    n_candidates: int  # candidates of the listed scans in the submission
    n_candidates_kept: int  # after the per-scan cut to 100
    n_ignored_irrelevant: int  # hit an irrelevant finding and no nodule
    n_extra_hits: int  # hits on a nodule beyond its first
    n_unlisted_candidates: int = 0  # candidate rows of scans not in the series list, ignored


@dataclass(frozen=True, eq=False)
class _Matching:
    """The candidates matched to the annotations, per distinct scan, ready for any resampling of scans.

    Entries are the scored items of the FROC analysis: one per hit nodule (its best
    score) and one per false positive, sorted by descending score.
    """

    n_rows: int
    row_scan: np.ndarray  # (n_rows,) index of each series-list row's distinct scan
    nodules_per_scan: np.ndarray  # (S,) int64
    entry_score: np.ndarray  # (E,) float64, descending
    entry_is_hit: np.ndarray  # (E,) bool
    entry_scan: np.ndarray  # (E,) int64
    counts_per_scan: dict[str, np.ndarray]  # name -> (S,) int64
    n_unlisted: int  # candidate rows of scans not in the series list (ignored)


def froc(
    annotations: AnnotationTable,
    excluded: AnnotationTable,
    series: Sequence[str],
    candidates: CandidateTable,
) -> FrocResult:
    """The LUNA16 FROC of `candidates` on the scans of `series`."""
    matching = _match(annotations, excluded, series, candidates)
    return _froc_of(matching)


def bootstrap_cpm(
    annotations: AnnotationTable,
    excluded: AnnotationTable,
    series: Sequence[str],
    candidates: CandidateTable,
    n_samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """A bootstrap interval of the CPM over scans.

    Each sample draws len(series) rows of the series list with replacement
    (numpy's default_rng(seed)); the CPM is recomputed with the drawn scans'
    nodules and candidates, each as often as drawn, and n_scans = the number of
    draws. A sample without any nodule has no sensitivity and is drawn again.
    The bounds are the order statistics the official script uses: sorted CPMs at
    floor(p * n) and floor((1 - p) * n), p = (1 - confidence) / 2.
    """
    matching = _match(annotations, excluded, series, candidates)
    return _bootstrap_interval(matching, n_samples, seed, confidence)


def froc_with_interval(
    annotations: AnnotationTable,
    excluded: AnnotationTable,
    series: Sequence[str],
    candidates: CandidateTable,
    n_samples: int,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[FrocResult, Optional[tuple[float, float]]]:
    """froc() and, for n_samples > 0, bootstrap_cpm()'s interval, matching the candidates once."""
    matching = _match(annotations, excluded, series, candidates)
    result = _froc_of(matching)
    return result, _bootstrap_interval(matching, n_samples, seed, confidence) if n_samples else None


def sensitivity_at(fp_per_scan: np.ndarray, sensitivity: np.ndarray, rates: Sequence[float]) -> np.ndarray:
    """The curve read at `rates` (>= 0) with numpy.interp, as the official script reads it.

    Linear between points; at a vertical step (several points at one x) the upper value,
    past the last point the last value.
    """
    xs = np.asarray(fp_per_scan, dtype=np.float64)
    ys = np.asarray(sensitivity, dtype=np.float64)
    return np.interp(np.asarray(rates, dtype=np.float64), xs, ys)


# ---------------------------------------------------------------------------
# matching


def _match(
    annotations: AnnotationTable,
    excluded: AnnotationTable,
    series: Sequence[str],
    candidates: CandidateTable,
) -> _Matching:
    series = [str(uid) for uid in series]
    if not series:
        raise LunakitError("series list: no scans to evaluate")
    scans = list(dict.fromkeys(series))  # distinct scans, in order of first appearance
    scan_index = {uid: k for k, uid in enumerate(scans)}
    row_scan = np.asarray([scan_index[uid] for uid in series], dtype=np.int64)

    n_unlisted = sum(1 for uid in candidates.seriesuid if uid not in scan_index)  # ignored, as the official script does

    cand_rows = _rows_by_scan(candidates.seriesuid, scan_index)
    nodule_rows = _rows_by_scan(annotations.seriesuid, scan_index)
    excluded_rows = _rows_by_scan(excluded.seriesuid, scan_index)
    nodule_r2 = radius_squared(annotations.diameter_mm)
    excluded_r2 = radius_squared(excluded.diameter_mm)

    n_scans = len(scans)
    counts = {
        name: np.zeros(n_scans, dtype=np.int64)
        for name in ("candidates", "kept", "hit_nodules", "false_positives", "ignored_irrelevant", "extra_hits")
    }
    nodules_per_scan = np.zeros(n_scans, dtype=np.int64)
    scores: list[np.ndarray] = []
    is_hit: list[np.ndarray] = []
    entry_scan: list[np.ndarray] = []

    for s in range(n_scans):
        rows = cand_rows[s]
        counts["candidates"][s] = len(rows)
        rows = rows[_top_marks(candidates.probability[rows])]
        counts["kept"][s] = len(rows)
        cand_xyz = candidates.center_xyz[rows]
        cand_score = candidates.probability[rows]

        nods = nodule_rows[s]
        nodules_per_scan[s] = len(nods)
        hits = sphere_hits(cand_xyz, annotations.center_xyz[nods], nodule_r2[nods])  # (n_cand, n_nod)
        irrelevant = sphere_hits(cand_xyz, excluded.center_xyz[excluded_rows[s]], excluded_r2[excluded_rows[s]])

        cand_hits_nodule = hits.any(axis=1)
        cand_ignored = ~cand_hits_nodule & irrelevant.any(axis=1)
        cand_fp = ~cand_hits_nodule & ~cand_ignored
        hits_per_nodule = hits.sum(axis=0)
        nodule_hit = hits_per_nodule > 0
        # best score per nodule: the highest score among the candidates that hit it
        masked = np.where(hits, cand_score[:, None], -np.inf)
        nodule_score = masked.max(axis=0) if len(rows) else np.full(len(nods), -np.inf)

        counts["hit_nodules"][s] = int(nodule_hit.sum())
        counts["false_positives"][s] = int(cand_fp.sum())
        counts["ignored_irrelevant"][s] = int(cand_ignored.sum())
        counts["extra_hits"][s] = int(np.maximum(hits_per_nodule - 1, 0).sum())

        scores += [nodule_score[nodule_hit], cand_score[cand_fp]]
        is_hit += [np.ones(int(nodule_hit.sum()), dtype=bool), np.zeros(int(cand_fp.sum()), dtype=bool)]
        entry_scan.append(np.full(int(nodule_hit.sum()) + int(cand_fp.sum()), s, dtype=np.int64))

    score = np.concatenate(scores) if scores else np.zeros(0)
    order = np.argsort(-score, kind="stable")
    return _Matching(
        n_rows=len(series),
        row_scan=row_scan,
        nodules_per_scan=nodules_per_scan,
        entry_score=score[order],
        entry_is_hit=np.concatenate(is_hit)[order],
        entry_scan=np.concatenate(entry_scan)[order],
        counts_per_scan=counts,
        n_unlisted=n_unlisted,
    )


def _rows_by_scan(seriesuid: Sequence[str], scan_index: dict[str, int]) -> list[np.ndarray]:
    """Row indices of a table per distinct scan; rows of scans outside the list are left out."""
    rows: list[list[int]] = [[] for _ in scan_index]
    for k, uid in enumerate(seriesuid):
        s = scan_index.get(uid)
        if s is not None:
            rows[s].append(k)
    return [np.asarray(r, dtype=np.int64) for r in rows]


def radius_squared(diameter_mm: np.ndarray) -> np.ndarray:
    """Squared radius of each annotation's sphere; a negative diameter counts as 10 mm."""
    diameter = np.where(diameter_mm < 0.0, DEFAULT_DIAMETER_MM, diameter_mm)
    return (diameter / 2.0) ** 2


def outside_truth(uid: str, findings_xyz: Sequence | np.ndarray, tables: Sequence[AnnotationTable]) -> np.ndarray:
    """bool [N]: which of series `uid`'s findings lie outside every sphere of that series in
    `tables` (AnnotationTables: the nodules, the irrelevant findings), by the LUNA16 hit rule."""
    xyz = np.asarray(findings_xyz, dtype=np.float64).reshape(-1, 3)
    outside = np.ones(len(xyz), dtype=bool)
    for table in tables:
        rows = np.array([i for i, s in enumerate(table.seriesuid) if s == uid], dtype=np.int64)
        if rows.size and len(xyz):
            outside &= ~sphere_hits(xyz, table.center_xyz[rows], radius_squared(table.diameter_mm[rows])).any(axis=1)
    return outside


def sphere_hits(cand_xyz: np.ndarray, center_xyz: np.ndarray, radius2: np.ndarray) -> np.ndarray:
    """(n_cand, n_ann) bool: squared distance strictly below the squared radius."""
    d = cand_xyz[:, None, :] - center_xyz[None, :, :]  # (n_cand, n_ann, 3)
    dist2 = d[..., 0] ** 2 + d[..., 1] ** 2 + d[..., 2] ** 2
    return dist2 < radius2[None, :]


def _top_marks(score: np.ndarray) -> np.ndarray:
    """Keep-mask of the per-scan cut: all if at most 100, else strictly above the 101st-highest score."""
    if len(score) <= MAX_MARKS_PER_SCAN:
        return np.ones(len(score), dtype=bool)
    cut = np.sort(score)[::-1][MAX_MARKS_PER_SCAN]
    return score > cut


# ---------------------------------------------------------------------------
# curve


def _curve(matching: _Matching, scan_weight: np.ndarray, n_scans: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fp_per_scan, sensitivity, thresholds) with each distinct scan counted scan_weight times.

    The divisions run in the official script's order, since at a step that falls exactly on a
    read-out rate the last bit decides the side: sklearn's roc_curve gives the fractions
    fp / all false positives and tp / all hits, and the script scales them back,
    fp_per_scan = fraction * all false positives / scans, sensitivity = fraction * all hits / nodules.
    """
    n_nodules = float(scan_weight @ matching.nodules_per_scan)
    weight = scan_weight[matching.entry_scan].astype(np.float64)
    tp = np.cumsum(np.where(matching.entry_is_hit, weight, 0.0))
    fp = np.cumsum(np.where(matching.entry_is_hit, 0.0, weight))
    score = matching.entry_score
    ends = np.flatnonzero(np.r_[score[1:] != score[:-1], True]) if len(score) else np.zeros(0, dtype=np.int64)
    fp_at, tp_at = np.r_[0.0, fp[ends]], np.r_[0.0, tp[ends]]
    all_fp, all_tp = fp_at[-1], tp_at[-1]
    fp_per_scan = (fp_at / all_fp) * all_fp / n_scans if all_fp > 0 else np.zeros_like(fp_at)
    sensitivity = (tp_at / all_tp) * all_tp / n_nodules if all_tp > 0 else np.zeros_like(tp_at)
    thresholds = np.r_[np.inf, score[ends]]
    return fp_per_scan, sensitivity, thresholds


def _froc_of(matching: _Matching) -> FrocResult:
    scan_weight = np.bincount(matching.row_scan, minlength=len(matching.nodules_per_scan))
    n_nodules = int(scan_weight @ matching.nodules_per_scan)
    if n_nodules == 0:
        raise LunakitError("annotations: no nodule in the scans of the series list, sensitivity is undefined")
    fps, sens, thresholds = _curve(matching, scan_weight, matching.n_rows)
    at_rates = sensitivity_at(fps, sens, FP_RATES)

    def total(name: str) -> int:
        return int(scan_weight @ matching.counts_per_scan[name])

    return FrocResult(
        fp_per_scan=fps,
        sensitivity=sens,
        thresholds=thresholds,
        fp_rates=FP_RATES,
        sensitivities=tuple(float(v) for v in at_rates),
        cpm=float(at_rates.mean()),
        n_scans=matching.n_rows,
        n_nodules=n_nodules,
        n_hit_nodules=total("hit_nodules"),
        n_false_positives=total("false_positives"),
        n_candidates=total("candidates"),
        n_candidates_kept=total("kept"),
        n_ignored_irrelevant=total("ignored_irrelevant"),
        n_extra_hits=total("extra_hits"),
        n_unlisted_candidates=matching.n_unlisted,
    )


def _bootstrap_cpms(matching: _Matching, n_samples: int, seed: int) -> np.ndarray:
    """CPM of n_samples resamplings of the series rows; samples without nodules are redrawn."""
    if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise LunakitError(f"bootstrap: n_samples must be a positive integer, got {n_samples!r}")
    n_distinct = len(matching.nodules_per_scan)
    rows_weight = np.bincount(matching.row_scan, minlength=n_distinct)
    if int(rows_weight @ matching.nodules_per_scan) == 0:
        raise LunakitError("annotations: no nodule in the scans of the series list, sensitivity is undefined")
    rng = np.random.default_rng(seed)
    cpms = np.empty(n_samples, dtype=np.float64)
    done = 0
    tries = 0
    while done < n_samples:
        tries += 1
        if tries > 100 * n_samples:
            raise LunakitError("bootstrap: almost every sample of scans had no nodule; too few scans with nodules")
        drawn = rng.integers(matching.n_rows, size=matching.n_rows)
        scan_weight = np.bincount(matching.row_scan[drawn], minlength=n_distinct)
        if int(scan_weight @ matching.nodules_per_scan) == 0:
            continue
        fps, sens, _ = _curve(matching, scan_weight, matching.n_rows)
        cpms[done] = sensitivity_at(fps, sens, FP_RATES).mean()
        done += 1
    return cpms


def _bootstrap_interval(matching: _Matching, n_samples: int, seed: int, confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise LunakitError(f"bootstrap: confidence must be in (0, 1), got {confidence}")
    cpms = np.sort(_bootstrap_cpms(matching, n_samples, seed))
    tail = (1.0 - confidence) / 2.0
    lo = min(int(math.floor(round(tail * n_samples, 9))), n_samples - 1)
    hi = min(int(math.floor(round((1.0 - tail) * n_samples, 9))), n_samples - 1)
    return float(cpms[lo]), float(cpms[hi])
