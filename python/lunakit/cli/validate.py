"""`lunakit validate --data R --bundle B`: analyze a held-out split and score it (LUNA16 FROC, CPM)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lunakit.cli.models import add_model_arguments, add_precision_argument, check_model_arguments, load_models
from lunakit.cli.progress import StageProgress
from lunakit.errors import LunakitError
from lunakit.evaluation.validate import SPLITS, format_confusion, validate, write_validation
from lunakit.io.files import check_output_folder
from lunakit.pipeline import precision
from lunakit.pipeline.loading import resolve_device
from lunakit.pipeline.memory import keep_freed_memory


def _run(args: argparse.Namespace) -> int:
    root = Path(args.data)
    if not root.is_dir():
        raise LunakitError(f"--data {root}: folder does not exist")
    check_model_arguments(args, "validate")
    if args.precision is not None:
        precision.check(args.precision, "--precision")
    check_output_folder(args.out)
    device = resolve_device(args.device)
    keep_freed_memory()
    models, options = load_models(args, device, "validate")
    options = precision.with_precision(options, args.precision, device, compiled=models.compiled)
    result = validate(
        root,
        args.split,
        args.val_stride,
        models,
        options,
        device,
        args.bootstrap,
        args.seed,
        on_scan=lambda n, total, uid: print(f"[{n}/{total}] {uid}", file=sys.stderr),
        progress=StageProgress(not args.quiet),
    )
    out = write_validation(Path(args.out), result, options, models.checksums)
    r = result.froc
    print(f"{args.split} split: {r.n_scans} scans, {r.n_nodules} nodules, {result.n_candidates} candidates")
    print("FPs/scan  sensitivity")
    for rate, sens in zip(r.fp_rates, r.sensitivities):
        print(f"{rate:8.3f}  {sens:11.4f}")
    ci = "" if result.cpm_ci is None else f"  95% CI [{result.cpm_ci[0]:.4f}, {result.cpm_ci[1]:.4f}]"
    print(f"CPM {r.cpm:.4f}{ci}; results in {out}")
    print(format_confusion(result.confusion))
    if result.fp_kinds is not None:
        k = result.fp_kinds
        line = ", ".join(f"{name} {k['at_threshold'][name]}/{n}" for name, n in k["all"].items())
        print(f"false positives by kind (p >= {k['threshold']:g} / all): {line}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("validate", help="analyze every scan of a split and score it (LUNA16 FROC)")
    p.add_argument("--data", required=True, help="LUNA16-style root (subset*/, annotations.csv, candidates.csv)")
    add_model_arguments(p)
    p.add_argument("--split", choices=SPLITS, default="val")
    p.add_argument("--val-stride", type=int, default=10)
    p.add_argument("--out", required=True, help="output folder (froc.json, candidates.csv, ...)")
    p.add_argument("--device", default="cpu")
    add_precision_argument(p)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples for the CPM interval (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run)
