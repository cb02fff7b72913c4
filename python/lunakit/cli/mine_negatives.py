"""`lunakit mine-negatives --data R --bundle B --out FILE`: a bundle's false positives on the
training scans as a candidates table, for `lunakit train classify --hard-negatives FILE`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lunakit.cli.models import add_model_arguments, check_model_arguments, load_models
from lunakit.cli.progress import StageProgress
from lunakit.errors import LunakitError
from lunakit.evaluation.validate import SPLITS


def _run(args: argparse.Namespace) -> int:
    from lunakit.evaluation.mining import mine_negatives, write_negatives
    from lunakit.pipeline.loading import resolve_device

    root = Path(args.data)
    if not root.is_dir():
        raise LunakitError(f"--data {root}: folder does not exist")
    out = Path(args.out)
    if out.is_dir():
        raise LunakitError(f"--out {out}: is a folder, not a file")
    if out.parent.exists() and not out.parent.is_dir():
        raise LunakitError(f"--out {out}: {out.parent} is not a folder")
    check_model_arguments(args, "mine-negatives", classifier=False)
    device = resolve_device(args.device)
    models, options = load_models(args, device, "mine-negatives")
    result = mine_negatives(
        root,
        args.split,
        args.val_stride,
        models,
        options,
        device,
        min_probability=args.min_probability,
        on_scan=None if args.quiet else lambda n, total, uid: print(f"[{n}/{total}] {uid}", file=sys.stderr),
        progress=StageProgress(not args.quiet),
    )
    write_negatives(out, result)
    print(
        f"{args.split} split: {len(result.series)} scans, {result.n_findings} findings, {result.n_hits} on nodules "
        f"or irrelevant findings, {len(result.negatives)} false positives -> {out}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mine-negatives",
        help="write a bundle's false positives on a split as class-0 candidates (hard negatives)",
        description="Analyze every scan of a split with a bundle (or checkpoints: a segmenter, with or "
        "without a classifier, and --option values) and write the findings that hit no nodule and no "
        "irrelevant finding as a LUNA16 candidates table (class 0, plus the classifier's probability), "
        "for lunakit train classify --hard-negatives.",
    )
    p.add_argument("--data", required=True, help="LUNA16-style root (subset*/, annotations.csv, candidates.csv)")
    add_model_arguments(p)
    p.add_argument("--split", choices=SPLITS, default="train", help="default train (keeps validation unseen)")
    p.add_argument("--val-stride", type=int, default=10, help="as the training run's (default 10)")
    p.add_argument(
        "--min-probability", type=float, default=0.0, help="keep false positives the classifier scores at least this"
    )
    p.add_argument("--out", required=True, help="output table (CSV)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run)
