"""The `lunakit` command line: one module per subcommand, each with `register(subparsers)`.

This package is the only place that parses arguments, prints for the user and turns a
LunakitError into one line on stderr and exit status 2 (docs/design.md, "Errors"). Library
modules never import it.
"""

from __future__ import annotations

import argparse
import sys

import lunakit
from lunakit.cli import (
    analyze,
    demo,
    evaluate,
    export,
    import_book,
    info,
    last_checkpoint,
    mine_negatives,
    pacs,
    prepcache,
    report,
    serve,
    synth,
    train,
    validate,
)
from lunakit.errors import LunakitError

COMMANDS = (
    info,
    demo,
    synth,
    prepcache,
    import_book,
    evaluate,
    train,
    last_checkpoint,
    analyze,
    pacs,
    export,
    validate,
    mine_negatives,
    report,
    serve,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lunakit",
        description="Lung-nodule CT analysis (research software, "
        "not for clinical use). Each subcommand has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"lunakit {lunakit.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LunakitError as exc:
        print(f"lunakit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lunakit: interrupted", file=sys.stderr)
        return 130
