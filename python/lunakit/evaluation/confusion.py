"""The book's 3x4 classification confusion of one scan's findings against its candidate list.

Rows (truth): non-nodule, benign nodule, malignant nodule.
Columns (what the pipeline did): complete miss, filtered out, predicted benign,
predicted malignant.

- A finding's class: filtered out when p_nodule < nodule_threshold; otherwise
  predicted malignant when p_malignant >= malignancy_threshold, else predicted
  benign (also when p_malignant is None: no malignancy model).
- A finding matches a nodule when their distance is strictly below 0.7 x the
  nodule's diameter (a nodule with diameter <= 0 matches nothing).
- Benign / malignant rows: one count per true nodule, in the column of the
  "highest" class among its matching findings (malignant > benign > filtered
  out), or complete miss when no finding matches. A finding matching several
  nodules counts for each.
- Non-nodule row: one count per finding that matches no true nodule, in the
  column of its class. Its complete-miss cell is always 0. Non-nodule truth
  entries do not define matches: LUNA16's non-nodule candidates carry no
  diameter, and a non-nodule left alone is not an error; only detections of
  something that is not a nodule are. This is the book's table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lunakit.errors import LunakitError

__all__ = ["CONFUSION_COLUMNS", "CONFUSION_ROWS", "MATCH_DIAMETER_FRACTION", "classification_confusion"]

CONFUSION_ROWS = ("non-nodule", "benign", "malignant")
CONFUSION_COLUMNS = ("complete miss", "filtered out", "predicted benign", "predicted malignant")
MATCH_DIAMETER_FRACTION = 0.7

_FILTERED, _BENIGN, _MALIGNANT = 1, 2, 3

TruthEntry = tuple[Sequence[float], float, bool, bool]  # center_xyz, diameter_mm, is_nodule, is_malignant
Finding = tuple[Sequence[float], float, "float | None"]  # center_xyz, p_nodule, p_malignant


def classification_confusion(
    truth: Sequence[TruthEntry],
    findings: Sequence[Finding],
    nodule_threshold: float = 0.5,
    malignancy_threshold: float = 0.5,
) -> np.ndarray:
    """(3, 4) int64 counts for one scan (sum the tables of several scans for a split)."""
    nodule_xyz, nodule_diameter, nodule_malignant = _true_nodules(truth)
    finding_xyz, finding_class = _finding_classes(findings, nodule_threshold, malignancy_threshold)

    confusion = np.zeros((3, 4), dtype=np.int64)
    d = nodule_xyz[:, None, :] - finding_xyz[None, :, :]  # (n_nodules, n_findings, 3)
    distance = np.sqrt((d**2).sum(axis=-1))
    matches = distance < MATCH_DIAMETER_FRACTION * nodule_diameter[:, None]  # (n_nodules, n_findings)

    for k in range(len(nodule_diameter)):
        best = int(finding_class[matches[k]].max()) if matches[k].any() else 0
        confusion[2 if nodule_malignant[k] else 1, best] += 1
    unmatched = ~matches.any(axis=0)
    for cls in finding_class[unmatched]:
        confusion[0, int(cls)] += 1
    return confusion


def _true_nodules(truth: Sequence[TruthEntry]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xyz, diameters, malignant = [], [], []
    for k, entry in enumerate(truth):
        try:
            center_xyz, diameter_mm, is_nodule, is_malignant = entry
            center = np.asarray(center_xyz, dtype=np.float64)
            diameter = float(diameter_mm)
        except (TypeError, ValueError):
            raise LunakitError(
                f"truth entry {k}: expected (center_xyz, diameter_mm, is_nodule, is_malignant)"
            ) from None
        if center.shape != (3,) or not np.isfinite(center).all() or not np.isfinite(diameter):
            raise LunakitError(f"truth entry {k}: center_xyz and diameter_mm must be finite, center has 3 values")
        if bool(is_nodule):
            xyz.append(center)
            diameters.append(diameter)
            malignant.append(bool(is_malignant))
    return (
        np.asarray(xyz, dtype=np.float64).reshape(-1, 3),
        np.asarray(diameters, dtype=np.float64),
        np.asarray(malignant, dtype=bool),
    )


def _finding_classes(
    findings: Sequence[Finding], nodule_threshold: float, malignancy_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    xyz, classes = [], []
    for k, entry in enumerate(findings):
        try:
            center_xyz, p_nodule, p_malignant = entry
            center = np.asarray(center_xyz, dtype=np.float64)
            p_nod = float(p_nodule)
            p_mal = None if p_malignant is None else float(p_malignant)
        except (TypeError, ValueError):
            raise LunakitError(f"finding {k}: expected (center_xyz, p_nodule, p_malignant)") from None
        if center.shape != (3,) or not np.isfinite(center).all():
            raise LunakitError(f"finding {k}: center_xyz must be 3 finite numbers")
        if not np.isfinite(p_nod) or (p_mal is not None and not np.isfinite(p_mal)):
            raise LunakitError(f"finding {k}: p_nodule and p_malignant must be finite")
        if p_nod < nodule_threshold:
            cls = _FILTERED
        elif p_mal is not None and p_mal >= malignancy_threshold:
            cls = _MALIGNANT
        else:
            cls = _BENIGN
        xyz.append(center)
        classes.append(cls)
    return np.asarray(xyz, dtype=np.float64).reshape(-1, 3), np.asarray(classes, dtype=np.int64)
