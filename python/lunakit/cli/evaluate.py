"""`lunakit evaluate`: a LUNA16 submission CSV scored by the official FROC rules (docs/evaluation.md)."""

from __future__ import annotations

import argparse
import json
import sys

from lunakit.errors import LunakitError
from lunakit.evaluation import (
    FrocResult,
    check_plot_path,
    froc_with_interval,
    plot_froc,
    read_annotations_table,
    read_candidates_table,
    read_series_list,
    require_matplotlib,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a LUNA16 submission CSV: FROC sensitivities at 1/8..8 FPs per scan and CPM",
        description=(
            "Score CAD marks (seriesuid,coordX,coordY,coordZ,probability) with the official LUNA16 "
            "FROC rules. Prints the sensitivity at 1/8, 1/4, 1/2, 1, 2, 4, 8 false positives per scan "
            "and the CPM (their mean) with a bootstrap 95%% interval over scans."
        ),
    )
    p.add_argument("--annotations", required=True, help="annotations.csv (the nodules)")
    p.add_argument("--excluded", required=True, help="annotations_excluded.csv (irrelevant findings)")
    p.add_argument("--series", required=True, help="seriesuids.csv: the scans, one UID a line, no header")
    p.add_argument("--candidates", required=True, help="the submission: seriesuid,coordX,coordY,coordZ,probability")
    p.add_argument("--plot", default=None, help="write the FROC curve here (.png, .pdf or .svg; needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples for the CPM interval (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.bootstrap < 0:
        raise LunakitError(f"--bootstrap: expected a number of samples >= 0, got {args.bootstrap}")
    plot_path = None
    if args.plot is not None:
        plot_path = check_plot_path(args.plot)
        require_matplotlib()  # fail before the work, not after it

    series = read_series_list(args.series)
    annotations = read_annotations_table(args.annotations)
    excluded = read_annotations_table(args.excluded)
    candidates = read_candidates_table(args.candidates)
    result, cpm_ci = froc_with_interval(annotations, excluded, series, candidates, args.bootstrap, args.seed)
    if result.n_unlisted_candidates:
        print(
            f"lunakit: warning: {args.candidates}: {result.n_unlisted_candidates} candidate row(s) of scans "
            f"not in {args.series} ignored (as the official script does)",
            file=sys.stderr,
        )

    if plot_path is not None:
        plot_froc(result, plot_path, cpm_ci)

    if args.json:
        print(
            json.dumps(
                {
                    "fp_rates": list(result.fp_rates),
                    "sensitivities": list(result.sensitivities),
                    "cpm": result.cpm,
                    "cpm_ci": list(cpm_ci) if cpm_ci is not None else None,
                    "n_scans": result.n_scans,
                    "n_nodules": result.n_nodules,
                }
            )
        )
    else:
        _print_table(result, cpm_ci, args.bootstrap, args.seed)
    return 0


def _print_table(result: FrocResult, cpm_ci: tuple[float, float] | None, n_samples: int, seed: int) -> None:
    out = sys.stdout
    out.write(
        f"LUNA16 FROC: {result.n_scans} scans, {result.n_nodules} nodules ({result.n_hit_nodules} hit), "
        f"{result.n_false_positives} false positives, {result.n_ignored_irrelevant} marks on irrelevant "
        f"findings ignored, {result.n_candidates_kept} of {result.n_candidates} candidates kept\n"
    )
    out.write("FPs/scan  sensitivity\n")
    for rate, sens in zip(result.fp_rates, result.sensitivities):
        out.write(f"{rate:8.3f}  {sens:11.4f}\n")
    line = f"CPM {result.cpm:.4f}"
    if cpm_ci is not None:
        line += f"  95% CI [{cpm_ci[0]:.4f}, {cpm_ci[1]:.4f}] ({n_samples} bootstrap samples over scans, seed {seed})"
    out.write(line + "\n")
