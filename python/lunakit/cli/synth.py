"""`lunakit synth OUT --scans N --seed S [--shape I R C]`: a phantom LUNA16 dataset with known truth."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from lunakit.synth import write_dataset

    summary = write_dataset(args.out, args.scans, args.seed, args.shape, progress=args.progress)
    print(
        f"synth: {summary.scans} scans, {summary.nodules} nodules ({summary.malignant} malignant), "
        f"{summary.candidates} candidates ({summary.positive_candidates} class 1), "
        f"{summary.excluded} excluded findings -> {summary.root}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write a phantom LUNA16 dataset (scans with known nodules)",
        description="Write phantom chest CT scans with known nodules in the LUNA16 "
        "layout (subsetN/*.mhd and the annotation/candidate tables).",
    )
    p.add_argument("out", help="output folder (created if missing)")
    p.add_argument("--scans", type=int, default=3, help="number of scans (default 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("I", "R", "C"),
        default=None,
        help="size of every scan; default varies per scan (I 60..90, R = C = 128)",
    )
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=_run)
