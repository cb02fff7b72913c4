"""`lunakit validate`: analyze every scan of a split of a LUNA16-style dataset, then score it.

The split is the training split (lunakit.data.train_val_series over the unified candidate list),
so held-out scans stay held out. Scoring is the official LUNA16 FROC (lunakit.evaluate) against
the dataset's annotations.csv and annotations_excluded.csv; the book's 3x4 confusion (truth
non-nodule / benign / malignant against complete miss / filtered out / predicted benign /
predicted malignant) comes with it, against annotations_with_malignancy.csv where present.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lunakit.errors import LunakitError
from lunakit.memory import keep_freed_memory
from lunakit.evaluation.confusion import CONFUSION_COLUMNS, CONFUSION_ROWS, classification_confusion

SPLITS = ("val", "train", "all")


def split_of(luna_root: Path, split: str, val_stride: int) -> list[str]:
    """The series UIDs of `split`, as the training apps split them."""
    from lunakit.data.classification import train_val_series
    from lunakit.luna import load_candidates

    train, val = train_val_series(load_candidates(luna_root), val_stride=val_stride)
    return {"train": train, "val": val, "all": sorted(train + val)}[split]


def _table(luna_root: Path, name: str, required: bool):
    from lunakit.evaluate import AnnotationTable, read_annotations_table

    path = luna_root / name
    if path.is_file():
        return read_annotations_table(path)
    if required:
        raise LunakitError(f"{luna_root}: no {name}")
    return AnnotationTable.build([], np.zeros((0, 3)), [], source=str(path))


def _cmd_validate(args: argparse.Namespace) -> int:
    from lunakit import ct
    from lunakit.analysis import analyze
    from lunakit.analyze_app import StageProgress, models_from_checkpoints, resolve_device
    from lunakit.evaluate import CandidateTable, bootstrap_cpm, froc
    from lunakit.luna import find_scans, load_candidates

    root = Path(args.data)
    if not root.is_dir():
        raise LunakitError(f"--data {root}: folder does not exist")
    if args.bundle and (args.seg or args.cls or args.mal):
        raise LunakitError("validate: give either --bundle or --seg/--cls[/--mal], not both")
    if not args.bundle and not (args.seg and args.cls):
        raise LunakitError("validate: need --bundle B, or --seg M and --cls M")
    device = resolve_device(args.device)
    keep_freed_memory()
    annotations = _table(root, "annotations.csv", required=True)
    excluded = _table(root, "annotations_excluded.csv", required=False)
    scans = find_scans(root)
    nodules = load_candidates(root, with_candidates=False)  # with malignancy where the table has it
    series = split_of(root, args.split, args.val_stride)
    if not series:
        raise LunakitError(f"{root}: the {args.split} split is empty")
    if args.bundle:
        from lunakit.bundle import load_bundle

        models, options, _ = load_bundle(args.bundle, device=device)
    else:
        from lunakit.analysis import AnalysisOptions

        models = models_from_checkpoints(args.seg, args.cls, args.mal, device)
        options = AnalysisOptions()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        uids, centers, scores = [], [], []
        all_findings = {}
        confusion = np.zeros((3, 4), dtype=np.int64)
        for n, uid in enumerate(series, start=1):
            scan = ct.load(scans[uid])
            print(f"[{n}/{len(series)}] {uid}", file=sys.stderr)
            findings = analyze(scan, models, options, device=device, progress=StageProgress(not args.quiet))
            all_findings[uid] = [f.to_dict() for f in findings]
            confusion += _confusion_of(uid, nodules, findings, options)
            for f in findings:
                uids.append(uid)
                centers.append(f.center_xyz)
                scores.append(f.p_nodule)
        candidates = CandidateTable.build(uids, np.array(centers).reshape(-1, 3), scores, source="findings")
        result = froc(annotations, excluded, series, candidates)
        cpm_ci = bootstrap_cpm(annotations, excluded, series, candidates, n_samples=args.bootstrap,
                               seed=args.seed) if args.bootstrap else None
        summary = {
            "split": args.split,
            "fp_rates": list(result.fp_rates),
            "sensitivities": [float(s) for s in result.sensitivities],
            "cpm": float(result.cpm),
            "cpm_ci": None if cpm_ci is None else [float(v) for v in cpm_ci],
            "n_scans": result.n_scans,
            "n_nodules": result.n_nodules,
            "n_candidates": len(uids),
            "confusion": {"rows": list(CONFUSION_ROWS), "columns": list(CONFUSION_COLUMNS),
                          "counts": confusion.tolist()},
            "options": options.to_dict(),
            "model_sha256": models.checksums,
        }
        (staging / "froc.json").write_text(json.dumps(summary, indent=2) + "\n")
        (staging / "findings_by_series.json").write_text(json.dumps(all_findings) + "\n")
        (staging / "seriesuids.csv").write_text("".join(f"{uid}\n" for uid in series))
        with open(staging / "candidates.csv", "w", newline="") as handle:
            handle.write("seriesuid,coordX,coordY,coordZ,probability\n")
            for uid, (x, y, z), p in zip(uids, centers, scores):
                handle.write(f"{uid},{x!r},{y!r},{z!r},{p!r}\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"{args.split} split: {result.n_scans} scans, {result.n_nodules} nodules, {len(uids)} candidates")
    print("FPs/scan  sensitivity")
    for rate, sens in zip(result.fp_rates, result.sensitivities):
        print(f"{rate:8.3f}  {sens:11.4f}")
    ci = "" if cpm_ci is None else f"  95% CI [{cpm_ci[0]:.4f}, {cpm_ci[1]:.4f}]"
    print(f"CPM {result.cpm:.4f}{ci}; results in {out}")
    print(format_confusion(confusion))
    return 0


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


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("validate", help="analyze every scan of a split and score it (LUNA16 FROC)")
    p.add_argument("--data", required=True, help="LUNA16-style root (subset*/, annotations.csv, candidates.csv)")
    p.add_argument("--bundle", help="model bundle folder")
    p.add_argument("--seg", help="segmentation checkpoint")
    p.add_argument("--cls", help="nodule classifier checkpoint")
    p.add_argument("--mal", help="malignancy classifier checkpoint")
    p.add_argument("--split", choices=SPLITS, default="val")
    p.add_argument("--val-stride", type=int, default=10)
    p.add_argument("--out", required=True, help="output folder (froc.json, candidates.csv, ...)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples for the CPM interval (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_validate)
