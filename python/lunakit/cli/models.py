"""The models a command runs: a bundle (--bundle B) or checkpoints (--seg M --cls M [--mal M],
with the pipeline options --option KEY=VALUE sets, the defaults for the rest)."""

from __future__ import annotations

import argparse

import torch

from lunakit.errors import LunakitError
from lunakit.pipeline.loading import models_from_checkpoints
from lunakit.pipeline.options import AnalysisOptions, Models


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--bundle, or --seg, --cls and --mal checkpoints and their --option values
    (check_model_arguments checks them)."""
    p.add_argument("--bundle", help="model bundle folder (lunakit export)")
    p.add_argument("--seg", help="segmentation checkpoint")
    p.add_argument("--cls", help="nodule classifier checkpoint")
    p.add_argument("--mal", help="malignancy classifier checkpoint")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with checkpoints: a pipeline option, as lunakit export takes it (repeatable; a bundle has its own)",
    )


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """--precision fp32|bf16|auto (checked by pipeline.precision.check: one line, exit 2)."""
    p.add_argument(
        "--precision",
        default=None,
        help="fp32: exact (the default, unless the bundle says otherwise); bf16: fast, bf16 with fp32 "
        "rechecks near the thresholds; auto: bf16 where the device has native bf16, else fp32",
    )


def check_model_arguments(args: argparse.Namespace, command: str, classifier: bool = True) -> None:
    """Either a bundle or checkpoints (seg, and cls unless `classifier` is False), never both;
    --option only with checkpoints."""
    if args.bundle and (args.seg or args.cls or args.mal):
        raise LunakitError(f"{command}: give either --bundle or --seg/--cls[/--mal], not both")
    if args.bundle and args.option:
        raise LunakitError(f"{command}: --option goes with checkpoints; a bundle carries its own options")
    if not args.bundle and not (args.seg and (args.cls or not classifier)):
        need = "--seg M and --cls M" if classifier else "--seg M [--cls M]"
        raise LunakitError(f"{command}: need --bundle B, or {need}")
    if not args.bundle and args.mal and not args.cls:
        raise LunakitError(f"{command}: --mal needs --cls")


def load_models(args: argparse.Namespace, device: torch.device, command: str) -> tuple[Models, AnalysisOptions]:
    """The bundle's models and options, or the checkpoints' models with the --option values and
    the spacing they were trained at (bundle.checkpoint_options, as lunakit export writes it)."""
    if args.bundle:
        from lunakit.bundle import load_bundle

        models, options, _ = load_bundle(args.bundle, device=device)
        return models, options
    from lunakit.bundle import checkpoint_options

    options = checkpoint_options(args.option, {"seg": args.seg, "cls": args.cls, "mal": args.mal}, command)
    return models_from_checkpoints(args.seg, args.cls, args.mal, device), options
