"""`lunakit prepcache --luna-root R --cache C`: every LUNA16 scan converted once into the volume cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lunakit.io.cache import CacheError, prepcache


def _run(args: argparse.Namespace) -> int:
    if args.workers < 0:
        raise CacheError(f"--workers must be >= 0, got {args.workers}")
    stats = prepcache(
        args.luna_root, args.cache, progress=not args.no_progress, workers=args.workers, resample_mm=args.resample_mm
    )
    for uid, error in stats.failed:
        print(f"lunakit: error: {error}", file=sys.stderr)
    print(f"prepcache: {stats.summary()} in {args.cache}")
    return 2 if stats.failed else 0


def spacing_mm(text: str) -> tuple[float, float, float]:
    """--resample-mm I,R,C (mm), checked by the pipeline options' rule."""
    from lunakit.pipeline.options import AnalysisError, checked_options

    try:
        values = [float(v) for v in text.split(",")]
        return tuple(checked_options({"resample_mm": values})["resample_mm"])  # type: ignore[return-value]
    except (ValueError, AnalysisError) as exc:
        raise argparse.ArgumentTypeError(f"expected 3 spacings in mm as I,R,C (e.g. 1.25,0.7,0.7): {exc}") from None


def add_resample_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resample-mm",
        type=spacing_mm,
        default=None,
        metavar="I,R,C",
        help="resample every scan to this spacing in mm (slice, row, column) as the pipeline option "
        "resample_mm does (default: the scans' own voxels, the book's way)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepcache",
        help="convert every LUNA16 scan (subset*/*.mhd) once into a cache of memory-mappable .npy volumes",
    )
    p.add_argument("--luna-root", required=True, type=Path, help="LUNA16 folder holding subset0..subset9")
    p.add_argument("--cache", required=True, type=Path, help="cache folder (created if missing)")
    p.add_argument("--workers", type=int, default=0, help="convert in this many processes (default 0: in this one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_resample_option(p)
    p.set_defaults(func=_run)
