"""`lunakit analyze SCAN --bundle B --out DIR`: one scan in, findings.json + findings.csv (+ report) out."""

from __future__ import annotations

import argparse
from pathlib import Path

from lunakit.cli.models import add_model_arguments, add_precision_argument, check_model_arguments, load_models
from lunakit.cli.progress import StageProgress
from lunakit.errors import LunakitError
from lunakit.io.files import check_output_folder
from lunakit.pipeline import precision
from lunakit.pipeline.loading import resolve_device
from lunakit.pipeline.memory import keep_freed_memory


def _run(args: argparse.Namespace) -> int:
    from lunakit.io import ct
    from lunakit.io.findings import write_results
    from lunakit.pipeline.analyze import analyze_with_mask

    if args.engine == "cpp" and not args.bundle:
        raise LunakitError("analyze: --engine cpp needs --bundle B (a TorchScript bundle)")
    if args.engine == "cpp" and args.dicom_out:
        raise LunakitError("analyze: --dicom-out needs the Python engine (the SEG needs the component mask)")
    check_model_arguments(args, "analyze")
    if args.precision is not None:
        precision.check(args.precision, "--precision")
    check_output_folder(args.out)
    keep_freed_memory()
    if args.engine == "cpp":
        from lunakit.pipeline.cpp_engine import CppAnalyzer

        # The bundle is loaded (and checked) before the scan is read, as with the Python engine.
        engine = CppAnalyzer(args.bundle, device=args.device, precision=args.precision)
        options, checksums = engine.options, engine.checksums
    else:
        device = resolve_device(args.device)
        models, options = load_models(args, device, "analyze")
        options = precision.with_precision(options, args.precision, device, compiled=models.compiled)
        checksums = models.checksums
    scan = ct.load(args.scan, series_uid=args.series_uid)
    sources = None
    if args.dicom_out:
        from lunakit.io.dicom_results import read_source_series

        sources = read_source_series(scan)  # refuses a non-DICOM scan before the analysis
    progress = StageProgress(enabled=not args.quiet)
    if args.engine == "cpp":
        findings = engine.analyze(scan, progress=progress)
    else:
        findings, mask = analyze_with_mask(scan, models, options, device=device, progress=progress)
    dicom = None
    if sources is not None:
        from lunakit.io.dicom_results import build_results, save_results

        dicom = build_results(sources, findings, mask, checksums)  # in memory: nothing is written yet

    def report(staging: Path) -> None:
        from lunakit.io.report import write_report

        write_report(staging, scan, findings, options)

    out = write_results(args.out, scan, findings, options, checksums, extra=report if args.report else None)
    if dicom is not None:
        from lunakit.io.findings import publish

        publish(args.dicom_out, lambda staging: save_results(staging, dicom))
    above = sum(f.p_nodule > options.nodule_threshold for f in findings)
    print(f"{len(findings)} candidates, {above} above p_nodule {options.nodule_threshold}; results in {out}")
    for f in findings[: args.show]:
        mal = "" if f.p_malignant is None else f" p_malignant={f.p_malignant:.3f}"
        x, y, z = f.center_xyz
        print(
            f"  p_nodule={f.p_nodule:.3f}{mal} center_xyz=({x:.1f}, {y:.1f}, {z:.1f}) mm "
            f"diameter={f.diameter_mm:.1f} mm"
        )
    if dicom is not None:
        print(f"DICOM SR and SEG: {', '.join(str(Path(args.dicom_out) / name) for name in dicom)}")
    if args.report:
        print(f"report: {Path(out) / 'report.html'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("analyze", help="find nodules in one CT scan")
    p.add_argument("scan", help=".mhd, .nii[.gz], .nrrd file or DICOM directory")
    add_model_arguments(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--dicom-out", help="also write a DICOM SR (TID 1500) and SEG of the findings here (DICOM input; docs/pacs.md)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument(
        "--engine",
        choices=("python", "cpp"),
        default="python",
        help="run the Python pipeline (default) or the C++ runtime in-process (needs a TorchScript --bundle)",
    )
    add_precision_argument(p)
    p.add_argument("--series-uid", default=None, help="pick one series of a multi-series DICOM folder")
    p.add_argument("--report", action="store_true", help="also write report.html with pictures")
    p.add_argument("--show", type=int, default=10, help="print the top N findings (default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
