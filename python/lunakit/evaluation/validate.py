"""Analyze every scan of a split of a LUNA16-style dataset, then score it (`lunakit validate`).

The split is the training split (lunakit.data.train_val_series over the unified candidate list),
so held-out scans stay held out. Scoring is the official LUNA16 FROC (lunakit.evaluation) against
the dataset's annotations.csv and annotations_excluded.csv; the book's 3x4 confusion (truth
non-nodule / benign / malignant against complete miss / filtered out / predicted benign /
predicted malignant) comes with it, against annotations_with_malignancy.csv where present, and
where the dataset has a hard_negatives.csv (phantom sets), the false positives per kind of
structure they sit on (lunakit.evaluation.negative_kinds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lunakit.errors import LunakitError
from lunakit.evaluation.confusion import CONFUSION_COLUMNS, CONFUSION_ROWS, classification_confusion
from lunakit.evaluation.froc import FrocResult, froc_with_interval
from lunakit.evaluation.negative_kinds import false_positive_kinds, read_negative_kinds
from lunakit.evaluation.tables import AnnotationTable, CandidateTable, read_annotations_table
from lunakit.pipeline.options import AnalysisOptions, Models, Progress
from lunakit.synth.dataset import HARD_NEGATIVES

SPLITS = ("val", "train", "all")


def split_of(luna_root: Path, split: str, val_stride: int) -> list[str]:
    """The series UIDs of `split`, as the training apps split them."""
    from lunakit.data.classification import train_val_series
    from lunakit.io.luna import load_candidates

    train, val = train_val_series(load_candidates(luna_root), val_stride=val_stride)
    return {"train": train, "val": val, "all": sorted(train + val)}[split]


def annotation_table(luna_root: Path, name: str, required: bool) -> AnnotationTable:
    """luna_root/name read as an annotation table; an empty one when it is absent and not required."""
    path = luna_root / name
    if path.is_file():
        return read_annotations_table(path)
    if required:
        raise LunakitError(f"{luna_root}: no {name}")
    return AnnotationTable.build([], np.zeros((0, 3)), [], source=str(path))


@dataclass
class Validation:
    """What validate() found and scored."""

    split: str
    series: list[str]
    findings: dict[str, list]  # series UID -> its findings (pipeline.options.Finding)
    froc: FrocResult
    cpm_ci: Optional[tuple[float, float]]
    confusion: np.ndarray  # (3, 4) int64, rows CONFUSION_ROWS, columns CONFUSION_COLUMNS
    fp_kinds: Optional[dict[str, Any]] = None  # negative_kinds.false_positive_kinds, with hard_negatives.csv

    @property
    def n_candidates(self) -> int:
        return sum(len(f) for f in self.findings.values())

    def summary(self, options: AnalysisOptions, checksums: dict[str, str]) -> dict[str, Any]:
        """froc.json: the sensitivities, CPM, counts and confusion, with the options and models used."""
        r = self.froc
        kinds = {} if self.fp_kinds is None else {"false_positive_kinds": self.fp_kinds}
        return {
            "split": self.split,
            "fp_rates": list(r.fp_rates),
            "sensitivities": [float(s) for s in r.sensitivities],
            "cpm": float(r.cpm),
            "cpm_ci": None if self.cpm_ci is None else [float(v) for v in self.cpm_ci],
            "n_scans": r.n_scans,
            "n_nodules": r.n_nodules,
            "n_candidates": self.n_candidates,
            "confusion": {
                "rows": list(CONFUSION_ROWS),
                "columns": list(CONFUSION_COLUMNS),
                "counts": self.confusion.tolist(),
            },
            **kinds,
            "options": options.to_dict(),
            "model_sha256": checksums,
        }


def validate(
    luna_root: Path,
    split: str,
    val_stride: int,
    models: Models,
    options: AnalysisOptions,
    device: torch.device,
    bootstrap: int = 1000,
    seed: int = 0,
    on_scan: Optional[Any] = None,
    progress: Optional[Progress] = None,
) -> Validation:
    """Analyze every scan of `split` and score the findings. `on_scan(n, total, uid)` is called
    before each scan; `progress` is handed to each analysis."""
    from lunakit.io import ct
    from lunakit.io.luna import find_scans, load_candidates
    from lunakit.pipeline.analyze import analyze

    annotations = annotation_table(luna_root, "annotations.csv", required=True)
    excluded = annotation_table(luna_root, "annotations_excluded.csv", required=False)
    scans = find_scans(luna_root)
    nodules = load_candidates(luna_root, with_candidates=False)  # with malignancy where the table has it
    series = split_of(luna_root, split, val_stride)
    if not series:
        raise LunakitError(f"{luna_root}: the {split} split is empty")
    # Read (and checked) before any scan is analyzed: a malformed table fails at once.
    kinds = read_negative_kinds(luna_root / HARD_NEGATIVES) if (luna_root / HARD_NEGATIVES).is_file() else None
    findings_by_series = {}
    confusion = np.zeros((3, 4), dtype=np.int64)
    for n, uid in enumerate(series, start=1):
        if on_scan is not None:
            on_scan(n, len(series), uid)
        findings = analyze(ct.load(scans[uid]), models, options, device=device, progress=progress)
        findings_by_series[uid] = findings
        confusion += _confusion_of(uid, nodules, findings, options)
    rows = [(uid, f.center_xyz, f.p_nodule) for uid, found in findings_by_series.items() for f in found]
    candidates = CandidateTable.build(
        [r[0] for r in rows], np.array([r[1] for r in rows]).reshape(-1, 3), [r[2] for r in rows], source="findings"
    )
    result, cpm_ci = froc_with_interval(annotations, excluded, series, candidates, bootstrap, seed)
    fp_kinds = None
    if kinds is not None:
        fp_kinds = false_positive_kinds(findings_by_series, (annotations, excluded), kinds, options.nodule_threshold)
    return Validation(split, series, findings_by_series, result, cpm_ci, confusion, fp_kinds)


def write_validation(out: Path, validation: Validation, options: AnalysisOptions, checksums: dict[str, str]) -> Path:
    """froc.json, findings_by_series.json, seriesuids.csv and candidates.csv (LUNA16) into `out`."""
    from lunakit.io.findings import publish, write_candidates_csv

    def build(staging: Path) -> None:
        summary = validation.summary(options, checksums)
        (staging / "froc.json").write_text(json.dumps(summary, indent=2) + "\n")
        by_series = {uid: [f.to_dict() for f in found] for uid, found in validation.findings.items()}
        (staging / "findings_by_series.json").write_text(json.dumps(by_series) + "\n")
        (staging / "seriesuids.csv").write_text("".join(f"{uid}\n" for uid in validation.series))
        write_candidates_csv(
            staging / "candidates.csv",
            ((uid, f.center_xyz, f.p_nodule) for uid, found in validation.findings.items() for f in found),
        )

    return publish(out, build)


def _confusion_of(uid: str, nodules: list, findings: list, options: Any) -> np.ndarray:
    """The book's 3x4 table of one scan (rows non-nodule/benign/malignant; nodules without a
    malignancy label count as benign)."""
    truth = [(n.center_xyz, n.diameter_mm, True, bool(n.is_malignant)) for n in nodules if n.series_uid == uid]
    found = [(f.center_xyz, f.p_nodule, f.p_malignant) for f in findings]
    return classification_confusion(truth, found, nodule_threshold=options.nodule_threshold)


def format_confusion(confusion: np.ndarray) -> str:
    """The table as aligned text, one row per truth class."""
    width = max(len(c) for c in CONFUSION_COLUMNS) + 2
    lines = [" " * 12 + "".join(c.rjust(width) for c in CONFUSION_COLUMNS)]
    for name, row in zip(CONFUSION_ROWS, confusion):
        lines.append(name.ljust(12) + "".join(str(int(v)).rjust(width) for v in row))
    return "\n".join(lines)
