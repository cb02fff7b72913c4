"""`lunakit demo`: the README's main job on a built-in default.

Writes a small phantom LUNA16 dataset (one scan) and prints what `lunakit info` says of it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run_demo(out: Path, seed: int = 2026) -> dict:
    from lunakit import ct
    from lunakit.luna import find_scans
    from lunakit.synth import make_dataset

    make_dataset(out, n_scans=1, seed=seed)
    series_uid, mhd_path = next(iter(find_scans(out).items()))
    info = ct.load(mhd_path).info()
    print(f"phantom dataset written to {out} (scan {series_uid})")
    print(json.dumps(info, indent=2))
    return info


def _cmd_demo(args: argparse.Namespace) -> int:
    run_demo(Path(args.out), seed=args.seed)
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("demo", help="write a phantom scan and show what lunakit reads from it")
    p.add_argument("--out", default="demo", help="output folder (default: ./demo)")
    p.add_argument("--seed", type=int, default=2026)
    p.set_defaults(func=_cmd_demo)
