"""`lunakit analyze`: one scan in, findings.json + findings.csv (+ report) out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import torch

from lunakit.analysis import AnalysisOptions, Models
from lunakit.errors import LunakitError
from lunakit.memory import keep_freed_memory


def resolve_device(name: str) -> torch.device:
    """A torch device the user asked for, refusing CUDA where there is none."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LunakitError(f"--device: unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LunakitError(f"--device {name}: no CUDA GPU is available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise LunakitError(f"--device {name}: only cpu and cuda are supported")
    return device


def models_from_checkpoints(seg: str, cls: str, mal: Optional[str], device: torch.device) -> Models:
    from lunakit.bundle import sha256_of
    from lunakit.models.checkpoint import load_checkpoint

    loaded = {}
    checksums = {}
    for kind, path in (("seg", seg), ("cls", cls), ("mal", mal)):
        if path is None:
            continue
        model, _ = load_checkpoint(path, kind=kind)
        loaded[kind] = model.to(device).eval()
        checksums[kind] = sha256_of(Path(path))
    return Models(seg=loaded["seg"], cls=loaded["cls"], mal=loaded.get("mal"), checksums=checksums)


class StageProgress:
    """A tqdm bar per pipeline stage, on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bars: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=f"{stage:>10}", unit="step", file=sys.stderr, leave=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()


def _cmd_analyze(args: argparse.Namespace) -> int:
    from lunakit import ct
    from lunakit.analysis import analyze
    from lunakit.results import write_results

    if args.bundle and (args.seg or args.cls or args.mal):
        raise LunakitError("analyze: give either --bundle or --seg/--cls[/--mal], not both")
    if not args.bundle and not (args.seg and args.cls):
        raise LunakitError("analyze: need --bundle B, or --seg M and --cls M")
    device = resolve_device(args.device)
    keep_freed_memory()
    if args.bundle:
        from lunakit.bundle import load_bundle

        models, options, _ = load_bundle(args.bundle, device=device)
    else:
        models = models_from_checkpoints(args.seg, args.cls, args.mal, device)
        options = AnalysisOptions()
    scan = ct.load(args.scan, series_uid=args.series_uid)
    progress = StageProgress(enabled=not args.quiet)
    findings = analyze(scan, models, options, device=device, progress=progress)

    def report(staging: Path) -> None:
        from lunakit.report import write_report

        write_report(staging, scan, findings, options)

    out = write_results(args.out, scan, findings, options, models.checksums, extra=report if args.report else None)
    above = sum(f.p_nodule > options.nodule_threshold for f in findings)
    print(f"{len(findings)} candidates, {above} above p_nodule {options.nodule_threshold}; results in {out}")
    for f in findings[: args.show]:
        mal = "" if f.p_malignant is None else f" p_malignant={f.p_malignant:.3f}"
        x, y, z = f.center_xyz
        print(f"  p_nodule={f.p_nodule:.3f}{mal} center_xyz=({x:.1f}, {y:.1f}, {z:.1f}) mm "
              f"diameter={f.diameter_mm:.1f} mm")
    if args.report:
        print(f"report: {Path(out) / 'report.html'}")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("analyze", help="find nodules in one CT scan")
    p.add_argument("scan", help=".mhd, .nii[.gz], .nrrd file or DICOM directory")
    p.add_argument("--bundle", help="model bundle folder (lunakit export)")
    p.add_argument("--seg", help="segmentation checkpoint")
    p.add_argument("--cls", help="nodule classifier checkpoint")
    p.add_argument("--mal", help="malignancy classifier checkpoint")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--series-uid", default=None, help="pick one series of a multi-series DICOM folder")
    p.add_argument("--report", action="store_true", help="also write report.html with pictures")
    p.add_argument("--show", type=int, default=10, help="print the top N findings (default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_analyze)
