"""What a validation's false positives sit on, where the dataset says what its non-nodules are.

Phantom sets other than the classic family (lunakit synth) write hard_negatives.csv: the centre
and kind (granuloma, scar, end-on vessel, vessel crossing) of every lesion drawn to look like a
nodule without being one. A false positive (a finding outside every nodule's and irrelevant
finding's sphere, the LUNA16 rule) counts for the nearest such lesion of its series whose centre
lies within KIND_RADIUS_MM, and as `other` (vessels, airways, the pleura) otherwise. The counts
tell which kind of structure a model mistakes for a nodule, which the CPM alone does not.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lunakit.errors import LunakitError
from lunakit.evaluation.froc import outside_truth
from lunakit.evaluation.tables import AnnotationTable
from lunakit.synth.dataset import HARD_NEGATIVES_HEADER

KIND_RADIUS_MM = 5.0  # a false positive within this distance of a hard negative's centre is on it
OTHER = "other"


def read_negative_kinds(path: Path) -> dict[str, list[tuple[np.ndarray, str]]]:
    """hard_negatives.csv: series UID -> [(centre xyz in mm, kind)]; a malformed row is refused
    in one line naming the file and the line."""
    by_series: dict[str, list[tuple[np.ndarray, str]]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in HARD_NEGATIVES_HEADER if c not in (reader.fieldnames or [])]
        if missing:
            raise LunakitError(f"{path}: no {', '.join(missing)} column")
        for row in reader:
            try:
                xyz = np.array([float(row[c]) for c in HARD_NEGATIVES_HEADER[1:4]])
            except (TypeError, ValueError):
                raise LunakitError(f"{path}, line {reader.line_num}: coordinates are not numbers") from None
            kind = (row["kind"] or "").strip()
            if not np.isfinite(xyz).all() or not row["seriesuid"] or not kind or kind == OTHER:
                raise LunakitError(f"{path}, line {reader.line_num}: needs a series, finite coordinates and a kind")
            by_series.setdefault(row["seriesuid"], []).append((xyz, kind))
    return by_series


def false_positive_kinds(
    findings: dict[str, Sequence[Any]],
    truth: Sequence[AnnotationTable],
    kinds: dict[str, list[tuple[np.ndarray, str]]],
    threshold: float,
) -> dict[str, Any]:
    """Counts of false positives per kind (every kind of `kinds`, and `other`): all of them, and
    those with p_nodule >= threshold. `findings` maps series UID -> findings (center_xyz,
    p_nodule); `truth` holds the nodule and irrelevant-finding tables."""
    names = sorted({kind for rows in kinds.values() for _, kind in rows}) + [OTHER]
    every = dict.fromkeys(names, 0)
    scored = dict.fromkeys(names, 0)
    for uid, found in findings.items():
        outside = outside_truth(uid, [f.center_xyz for f in found], truth)
        for finding, is_fp in zip(found, outside):
            if not is_fp:
                continue
            kind = _nearest_kind(np.asarray(finding.center_xyz, dtype=np.float64), kinds.get(uid, []))
            every[kind] += 1
            if finding.p_nodule >= threshold:
                scored[kind] += 1
    return {"radius_mm": KIND_RADIUS_MM, "threshold": threshold, "all": every, "at_threshold": scored}


def _nearest_kind(xyz: np.ndarray, lesions: list[tuple[np.ndarray, str]]) -> str:
    best, kind = math.inf, OTHER
    for centre, name in lesions:
        distance = float(np.linalg.norm(xyz - centre))
        if distance <= KIND_RADIUS_MM and distance < best:
            best, kind = distance, name
    return kind
