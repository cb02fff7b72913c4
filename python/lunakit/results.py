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
from lunakit.analysis import AnalysisOptions, Finding
from lunakit.ct import CtScan

FINDINGS_JSON = "findings.json"
FINDINGS_CSV = "findings.csv"
CSV_HEADER = ("seriesuid", "coordX", "coordY", "coordZ", "probability")


def findings_document(scan: CtScan, findings: Iterable[Finding], options: AnalysisOptions,
                      checksums: dict[str, str]) -> dict[str, Any]:
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


def write_findings_csv(path: Path, series_uid: str, findings: Iterable[Finding]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        for f in findings:
            x, y, z = f.center_xyz
            writer.writerow([series_uid, repr(float(x)), repr(float(y)), repr(float(z)), repr(float(f.p_nodule))])


def write_results(out_dir: str | os.PathLike, scan: CtScan, findings: list[Finding],
                  options: AnalysisOptions, checksums: dict[str, str],
                  extra: Optional[Callable[[Path], None]] = None) -> Path:
    """Write findings.json, findings.csv (and what `extra(staging)` adds) into `out_dir`."""
    out_dir = Path(out_dir)
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=parent))
    try:
        document = findings_document(scan, findings, options, checksums)
        (staging / FINDINGS_JSON).write_text(json.dumps(document, indent=2) + "\n")
        write_findings_csv(staging / FINDINGS_CSV, scan.series_uid, findings)
        if extra is not None:
            extra(staging)
        out_dir.mkdir(exist_ok=True)
        for entry in sorted(staging.iterdir()):
            target = out_dir / entry.name
            if target.is_dir() and entry.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
