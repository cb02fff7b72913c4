"""`lunakit last-checkpoint RUN_DIR OUT.pt`: a run's last finished epoch as a checkpoint."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from lunakit.train.last_checkpoint import last_checkpoint

    out = last_checkpoint(args.run_dir, args.out)
    print(f"{out}: last epoch of {args.run_dir}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "last-checkpoint", help="write the model of a training run's last epoch (state.pt) as a checkpoint"
    )
    p.add_argument("run_dir", help="a `lunakit train` output folder (holds state.pt)")
    p.add_argument("out", help="the checkpoint to write (.pt)")
    p.set_defaults(func=_run)
