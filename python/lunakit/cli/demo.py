"""`lunakit demo`: the README's main job on a built-in default.

Writes one phantom chest CT (a seed the demo models never trained on), analyzes it with the C++
runtime `luna_infer` and the committed demo bundle (models/demo-bundle, trained on phantoms by
the project; not for clinical use), writes the report and prints the findings.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from lunakit.errors import LunakitError

DEMO_SEED = 2026  # the demo bundle trained on seed 7 (docs/training.md)


def _demo_bundle() -> Path:
    """models/demo-bundle as installed into the package (a wheel, or an editable install's build)."""
    import lunakit

    for root in lunakit.__path__:
        if (Path(root) / "demo-bundle" / "manifest.json").is_file():
            return Path(root) / "demo-bundle"
    return Path(lunakit.__path__[0]) / "demo-bundle"  # absent: run_demo says so


DEMO_BUNDLE = _demo_bundle()


def luna_infer_path() -> Path:
    """The luna_infer installed with this lunakit (next to the Python that runs it)."""
    candidate = Path(sys.executable).parent / "luna_infer"
    found = candidate if candidate.is_file() else shutil.which("luna_infer")
    if not found:
        raise LunakitError("luna_infer not found next to this Python or on PATH; run scripts/setup.sh")
    return Path(found)


def run_demo(out: Path, bundle: Path = DEMO_BUNDLE, seed: int = DEMO_SEED, show: int = 5) -> dict:
    from lunakit.io import ct
    from lunakit.io.findings import publish, read_findings
    from lunakit.io.luna import find_scans
    from lunakit.io.report import write_report
    from lunakit.pipeline.options import AnalysisOptions
    from lunakit.synth import make_dataset

    if not (bundle / "manifest.json").is_file():
        raise LunakitError(f"{bundle}: demo bundle not found")
    make_dataset(out / "phantom", n_scans=1, seed=seed)
    series_uid, scan_path = next(iter(find_scans(out / "phantom").items()))
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    command = [
        str(luna_infer_path()),
        "analyze",
        "--bundle",
        str(bundle),
        "--input",
        str(scan_path),
        "--output",
        str(results / "findings.json"),
        "--csv",
        str(results / "findings.csv"),
    ]
    print("$ " + " ".join(command), flush=True)
    completed = subprocess.run(command)
    if completed.returncode != 0:
        raise LunakitError(f"luna_infer exited with {completed.returncode}")

    document, findings = read_findings(results / "findings.json")
    scan = ct.load(scan_path)
    options = AnalysisOptions.from_dict(document["options"])
    publish(results, lambda staging: write_report(staging, scan, findings, options))
    above = [f for f in findings if f.p_nodule > options.nodule_threshold]
    print(f"phantom scan {scan_path} ({'x'.join(map(str, scan.hu.shape))} voxels)")
    print(f"{len(findings)} candidates, {len(above)} with p_nodule > {options.nodule_threshold}:")
    for f in findings[:show]:
        x, y, z = f.center_xyz
        mal = "" if f.p_malignant is None else f", p_malignant {f.p_malignant:.2f}"
        print(f"  p_nodule {f.p_nodule:.2f}{mal}, {f.diameter_mm:.1f} mm at ({x:.1f}, {y:.1f}, {z:.1f}) mm")
    print(f"findings: {results / 'findings.json'}, {results / 'findings.csv'}")
    print(f"report:   {results / 'report.html'}")
    return document


def _run(args: argparse.Namespace) -> int:
    run_demo(Path(args.out), bundle=Path(args.bundle), seed=args.seed)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="analyze a phantom scan with luna_infer and the demo bundle")
    p.add_argument("--out", default="demo", help="output folder (default: ./demo)")
    p.add_argument("--bundle", default=str(DEMO_BUNDLE), help="bundle to use (default: the demo bundle)")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help="phantom seed")
    p.set_defaults(func=_run)
