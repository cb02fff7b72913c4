"""`lunakit import-book STATE --kind seg|cls|mal --out M`: the book's .state files as lunakit checkpoints."""

from __future__ import annotations

import argparse

from lunakit.models import book
from lunakit.models.checkpoint import KIND_MODEL_CLASS, KINDS


def _run(args: argparse.Namespace) -> int:
    out = book.convert(args.checkpoint, args.kind, args.out)
    print(f"{out}: {args.kind} model ({KIND_MODEL_CLASS[args.kind]}) imported from {args.checkpoint}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import-book",
        help="convert a checkpoint of the book (a .state file) into a lunakit checkpoint",
        description=book.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="the book's .state file")
    p.add_argument(
        "--kind", required=True, choices=KINDS, help="cls: nodule classifier, seg: segmentation, mal: malignancy"
    )
    p.add_argument("--out", required=True, help="the lunakit checkpoint to write (e.g. model.pt)")
    p.set_defaults(func=_run)
