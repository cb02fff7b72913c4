"""Hard-negative mining: a bundle's own false positives on the training scans, as a candidates
table (`lunakit mine-negatives`; docs/training.md).

Every scan of the split is analyzed with the bundle's segmenter and classifier, or with a
segmenter alone. A finding is a false positive when its centre lies outside every annotated
nodule's sphere and every irrelevant finding's sphere (the LUNA16 hit rule: strictly inside
radius = diameter / 2; an excluded finding without a diameter counts as 10 mm;
lunakit.evaluation.froc). Those findings are written as class-0 rows of a LUNA16 candidates
table, with the classifier's probability as an extra column (empty without a classifier), for
`lunakit train classify --hard-negatives FILE`. Which rows are written depends on the segmenter
alone unless min_probability is above 0.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from lunakit.errors import LunakitError
from lunakit.evaluation.froc import outside_truth
from lunakit.evaluation.validate import annotation_table, split_of
from lunakit.pipeline.options import AnalysisOptions, Models, Progress

HARD_NEGATIVES_HEADER = ["seriesuid", "coordX", "coordY", "coordZ", "class", "probability"]


@dataclass(frozen=True)
class MinedNegative:
    series_uid: str
    center_xyz: tuple[float, float, float]
    p_nodule: float


@dataclass
class MiningResult:
    series: list[str]
    negatives: list[MinedNegative]
    n_findings: int  # every finding of the split, hits included
    n_hits: int  # findings on a nodule or an irrelevant finding (not written)


def mine_negatives(
    luna_root: Path,
    split: str,
    val_stride: int,
    models: Models,
    options: AnalysisOptions,
    device: torch.device,
    min_probability: float = 0.0,
    on_scan: Optional[Callable[[int, int, str], Any]] = None,
    progress: Optional[Progress] = None,
) -> MiningResult:
    """Analyze every scan of `split` and keep the findings that hit neither a nodule nor an
    irrelevant finding and score at least min_probability."""
    from lunakit.io import ct
    from lunakit.io.luna import find_scans
    from lunakit.pipeline.analyze import analyze

    if not (isinstance(min_probability, (int, float)) and 0.0 <= min_probability <= 1.0):
        raise LunakitError(f"--min-probability must lie in 0..1, got {min_probability!r}")
    if models.cls is None and min_probability > 0:
        raise LunakitError("--min-probability needs a classifier (--cls or a bundle)")
    models = replace(models, mal=None)  # mining reads p_nodule alone: malignancy would be wasted work
    annotations = annotation_table(luna_root, "annotations.csv", required=True)
    excluded = annotation_table(luna_root, "annotations_excluded.csv", required=False)
    scans = find_scans(luna_root)
    series = split_of(luna_root, split, val_stride)
    if not series:
        raise LunakitError(f"{luna_root}: the {split} split is empty")
    negatives: list[MinedNegative] = []
    n_findings = n_hits = 0
    for n, uid in enumerate(series, start=1):
        if on_scan is not None:
            on_scan(n, len(series), uid)
        findings = analyze(ct.load(scans[uid]), models, options, device=device, progress=progress)
        if not findings:
            continue
        keep = outside_truth(uid, [f.center_xyz for f in findings], (annotations, excluded))
        n_findings += len(findings)
        n_hits += int((~keep).sum())
        for f, fp in zip(findings, keep):
            if fp and (models.cls is None or f.p_nodule >= min_probability):
                negatives.append(MinedNegative(uid, tuple(float(v) for v in f.center_xyz), float(f.p_nodule)))
    return MiningResult(series, negatives, n_findings, n_hits)


def write_negatives(path: Path, result: MiningResult) -> None:
    """The mined negatives as a candidates table (class 0, probability), written atomically."""
    from lunakit.io.files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(HARD_NEGATIVES_HEADER)
            for m in result.negatives:
                probability = "" if math.isnan(m.p_nodule) else repr(m.p_nodule)
                writer.writerow([m.series_uid, *(repr(float(v)) for v in m.center_xyz), "0", probability])

    atomic_write(path, write)
