"""The `lunakit` command line. Each subcommand lives in the module that does the work;
this file only parses arguments and turns LunakitError into one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys

from lunakit.errors import LunakitError


def _cmd_info(args: argparse.Namespace) -> int:
    from lunakit import ct

    scan = ct.load(args.scan, series_uid=args.series_uid)
    print(json.dumps(scan.info(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lunakit", description=__doc__)
    parser.add_argument("--version", action="version", version="lunakit 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print size, spacing, origin, direction, series UID and HU range as JSON")
    p.add_argument("scan", help=".mhd, .nii[.gz], .nrrd file or DICOM directory")
    p.add_argument("--series-uid", default=None, help="pick one series of a multi-series DICOM directory")
    p.set_defaults(func=_cmd_info)

    for register in _registrars():
        register(sub)
    return parser


def _registrars():
    """Subcommands contributed by other modules (each has `register_cli(subparsers)`)."""
    import importlib

    out = []
    for name in ("lunakit.demo", "lunakit.synth", "lunakit.cache", "lunakit.book", "lunakit.evaluate", "lunakit.train",
                 "lunakit.analyze_app", "lunakit.bundle", "lunakit.validate",
                 "lunakit.report", "lunakit.serve"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        out.append(module.register_cli)
    return out


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


if __name__ == "__main__":
    sys.exit(main())
