"""`lunakit report SCAN --findings F --out DIR`: report.html for a findings.json (Python or luna_infer)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lunakit.errors import LunakitError
from lunakit.io.files import check_output_folder


def _run(args: argparse.Namespace) -> int:
    from lunakit.io import ct
    from lunakit.io.findings import publish, read_findings
    from lunakit.io.report import write_report
    from lunakit.pipeline.options import AnalysisOptions

    check_output_folder(args.out)
    document, findings = read_findings(args.findings)
    scan = ct.load(args.scan, series_uid=args.series_uid)
    if list(scan.hu.shape) != list(document.get("size_irc", scan.hu.shape)):
        raise LunakitError(
            f"{args.findings}: findings are for a scan of size {document['size_irc']}, "
            f"{args.scan} has {list(scan.hu.shape)}"
        )
    options = AnalysisOptions.from_dict(document["options"]) if "options" in document else AnalysisOptions()
    out = publish(args.out, lambda staging: write_report(staging, scan, findings, options))
    print(f"report: {Path(out) / 'report.html'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="write report.html for a findings.json (Python or luna_infer)")
    p.add_argument("scan", help="the scan the findings are from")
    p.add_argument("--findings", required=True, help="findings.json")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--series-uid", default=None)
    p.set_defaults(func=_run)
