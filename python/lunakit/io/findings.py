"""Writing analysis results: findings.json (full records), findings.csv (LUNA16 submission).

Everything is produced in a staging folder first and moved into place only when complete, so a
failure never leaves partial output behind.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

import lunakit
from lunakit.io.ct import CtScan
from lunakit.io.files import commit_folder
from lunakit.pipeline.options import AnalysisOptions, Finding

FINDINGS_JSON = "findings.json"
FINDINGS_CSV = "findings.csv"
CSV_HEADER = ("seriesuid", "coordX", "coordY", "coordZ", "probability")


def findings_document(
    scan: CtScan, findings: Iterable[Finding], options: AnalysisOptions, checksums: dict[str, str]
) -> dict[str, Any]:
    """The findings.json object: scan geometry, options, model checksums and every finding."""
    return {
        "lunakit_version": lunakit.__version__,
        "torch_version": str(torch.__version__).split("+")[0],
        "series_uid": scan.series_uid,
        "source": str(scan.path),
        "size_irc": [int(s) for s in scan.hu.shape],
        "geometry": scan.geometry.to_dict(),
        "options": options.to_dict(),
        "model_sha256": dict(sorted(checksums.items())),
        "findings": [f.to_dict() for f in findings],
    }


def write_candidates_csv(path: Path, rows: Iterable[tuple[str, Any, float]]) -> None:
    """The LUNA16 submission format from (series UID, center_xyz, probability) rows; numbers in
    full precision (repr), so the file reads back exactly."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        for uid, (x, y, z), p in rows:
            writer.writerow([uid, repr(float(x)), repr(float(y)), repr(float(z)), repr(float(p))])


def write_findings_csv(path: Path, series_uid: str, findings: Iterable[Finding]) -> None:
    """findings.csv: one scan's findings as LUNA16 rows."""
    write_candidates_csv(path, ((series_uid, f.center_xyz, f.p_nodule) for f in findings))


def publish(out_dir: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Run `build(staging)` in a fresh staging folder beside `out_dir`, then make what it wrote
    `out_dir`'s content in one step (files already in `out_dir` that it did not write stay). On
    any failure, and if the process is killed at any point, `out_dir` holds either its previous
    content or the complete new one (files.commit_folder)."""
    out_dir = Path(out_dir)
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=parent))
    try:
        build(staging)
        commit_folder(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def write_results(
    out_dir: str | os.PathLike,
    scan: CtScan,
    findings: list[Finding],
    options: AnalysisOptions,
    checksums: dict[str, str],
    extra: Optional[Callable[[Path], None]] = None,
) -> Path:
    """Write findings.json, findings.csv (and what `extra(staging)` adds) into `out_dir`."""

    def build(staging: Path) -> None:
        document = findings_document(scan, findings, options, checksums)
        (staging / FINDINGS_JSON).write_text(json.dumps(document, indent=2) + "\n")
        write_findings_csv(staging / FINDINGS_CSV, scan.series_uid, findings)
        if extra is not None:
            extra(staging)

    return publish(out_dir, build)


def read_findings(path: str | os.PathLike) -> tuple[dict[str, Any], list[Finding]]:
    """A findings.json (from `lunakit analyze` or `luna_infer analyze`) -> (document, findings)."""
    from lunakit.errors import LunakitError

    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise LunakitError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LunakitError(f"{path}: not valid JSON ({exc})") from None
    try:
        findings = [
            Finding(
                center_xyz=tuple(f["center_xyz"]),
                center_irc=tuple(f["center_irc"]),
                voxel_count=int(f["voxel_count"]),
                bbox_irc=(tuple(f["bbox_irc"][0]), tuple(f["bbox_irc"][1])),
                diameter_mm=float(f["diameter_mm"]),
                p_nodule=float(f["p_nodule"]),
                p_malignant=None if f.get("p_malignant") is None else float(f["p_malignant"]),
            )
            for f in document["findings"]
        ]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise LunakitError(f"{path}: not a lunakit findings file ({type(exc).__name__}: {exc})") from None
    return document, findings
