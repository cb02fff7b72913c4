"""`lunakit pacs analyze --url URL --study UID --bundle B`: fetch a study's CT series from a PACS
over DICOMweb, analyze it, store a DICOM SR and SEG of the findings back (docs/pacs.md)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from lunakit.cli.models import add_model_arguments, check_model_arguments, load_models
from lunakit.cli.progress import StageProgress
from lunakit.pipeline.loading import resolve_device
from lunakit.pipeline.memory import keep_freed_memory


def _analyze(args: argparse.Namespace) -> int:
    from lunakit.io import ct
    from lunakit.io.dicom_results import build_results, read_source_series, save_results
    from lunakit.io.findings import write_results
    from lunakit.io.pacs import Pacs
    from lunakit.pipeline.analyze import analyze_with_mask

    check_model_arguments(args, "pacs analyze")
    keep_freed_memory()
    device = resolve_device(args.device)
    models, options = load_models(args, device, "pacs analyze")
    pacs = Pacs(args.url)
    series_uid = pacs.ct_series(args.study, args.series)
    with tempfile.TemporaryDirectory(prefix="lunakit-pacs-") as folder:
        count = pacs.fetch_series(args.study, series_uid, Path(folder))
        if not args.quiet:
            print(f"fetched series {series_uid}: {count} instances")
        scan = ct.load(folder, series_uid=series_uid)
        sources = read_source_series(scan)
        findings, mask = analyze_with_mask(
            scan, models, options, device=device, progress=StageProgress(enabled=not args.quiet)
        )
        results = build_results(sources, findings, mask, models.checksums)
        if args.out:
            write_results(args.out, scan, findings, options, models.checksums, extra=lambda s: save_results(s, results))
    pacs.store(results.values())
    above = sum(f.p_nodule > options.nodule_threshold for f in findings)
    print(f"{len(findings)} candidates, {above} above p_nodule {options.nodule_threshold}; stored in the PACS:")
    for name, dataset in results.items():
        print(f"  {dataset.Modality} series {dataset.SeriesInstanceUID} instance {dataset.SOPInstanceUID} ({name})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pacs", help="analyze studies of a PACS over DICOMweb (docs/pacs.md)")
    sub = p.add_subparsers(dest="pacs_command", required=True)
    a = sub.add_parser("analyze", help="fetch a study's CT series, analyze it, store DICOM SR + SEG back")
    a.add_argument("--url", required=True, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web (Orthanc)")
    a.add_argument("--study", required=True, help="StudyInstanceUID")
    a.add_argument("--series", default=None, help="SeriesInstanceUID, when the study has several CT series")
    add_model_arguments(a)
    a.add_argument("--out", default=None, help="also write findings.json, findings.csv, SR and SEG here")
    a.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.set_defaults(func=_analyze)
