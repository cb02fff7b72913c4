"""`lunakit info SCAN`: size, spacing, origin, direction, series UID and HU range as JSON."""

from __future__ import annotations

import argparse
import json


def _run(args: argparse.Namespace) -> int:
    from lunakit.io import ct

    scan = ct.load(args.scan, series_uid=args.series_uid)
    print(json.dumps(scan.info(), indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="print size, spacing, origin, direction, series UID and HU range as JSON")
    p.add_argument("scan", help=".mhd, .nii[.gz], .nrrd file or DICOM directory")
    p.add_argument("--series-uid", default=None, help="pick one series of a multi-series DICOM directory")
    p.set_defaults(func=_run)
