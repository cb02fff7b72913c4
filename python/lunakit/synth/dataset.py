"""Writing a phantom dataset in the LUNA16 layout, and the `lunakit synth` subcommand."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from lunakit.synth.family import Family, SynthError, get_family

ANNOTATIONS_HEADER = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
MALIGNANCY_HEADER = ANNOTATIONS_HEADER + [
    "mal_bool",
    "mal_details",
    "bboxLowX",
    "bboxLowY",
    "bboxLowZ",
    "bboxHighX",
    "bboxHighY",
    "bboxHighZ",
    "len_mal_details",
]
CANDIDATES_HEADER = ["seriesuid", "coordX", "coordY", "coordZ", "class"]
HARD_NEGATIVES_HEADER = ["seriesuid", "coordX", "coordY", "coordZ", "kind"]
HARD_NEGATIVES = "hard_negatives.csv"  # written by every family but classic
TABLES = (
    "annotations.csv",
    "annotations_with_malignancy.csv",
    "candidates.csv",
    "annotations_excluded.csv",
    "seriesuids.csv",
)
MANIFEST = "synth.json"
MIN_DIM = 16
MAX_VOXELS = 1 << 26  # 64 Mi voxels per scan (e.g. 256 x 512 x 512)
MAX_SCANS = 100_000
MAX_SEED = (1 << 63) - 1


@dataclass(frozen=True)
class DatasetSummary:
    """What a make_dataset call wrote."""

    root: Path
    scans: int
    nodules: int
    malignant: int
    candidates: int
    positive_candidates: int
    excluded: int


def check_arguments(
    n_scans: int, seed: int, shape: Sequence[int] | None
) -> tuple[int, int, tuple[int, int, int] | None]:
    """Validated (n_scans, seed, shape); SynthError names the bad argument."""
    if isinstance(n_scans, bool) or not isinstance(n_scans, (int, np.integer)) or not 1 <= n_scans <= MAX_SCANS:
        raise SynthError(f"synth: number of scans must be an integer in 1..{MAX_SCANS}, got {n_scans!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise SynthError(f"synth: seed must be an integer in 0..2**63-1, got {seed!r}")
    if shape is None:
        return int(n_scans), int(seed), None
    dims = list(shape)
    if len(dims) != 3 or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) for d in dims):
        raise SynthError(f"synth: shape must be three integers (I, R, C), got {shape!r}")
    if min(dims) < MIN_DIM:
        raise SynthError(f"synth: every shape dimension must be >= {MIN_DIM}, got {tuple(dims)}")
    if int(np.prod(np.asarray(dims, dtype=np.int64))) > MAX_VOXELS:
        raise SynthError(f"synth: shape {tuple(dims)} has more than {MAX_VOXELS} voxels per scan")
    return int(n_scans), int(seed), (int(dims[0]), int(dims[1]), int(dims[2]))


def make_dataset(
    out: str | os.PathLike,
    n_scans: int,
    seed: int,
    shape: Sequence[int] | None = None,
    progress: bool = False,
    family: Family | str | None = None,
) -> Path:
    """Write a phantom LUNA16 dataset of n_scans scans into `out`; returns `out` as a Path.

    Scan k goes to out/subset{k % 10}/<seriesuid>.mhd (+ .raw). shape=(I, R, C) forces the
    size of every scan; None varies it per scan (I in 60..90, R = C = 128). Tables:
    annotations.csv, annotations_with_malignancy.csv, candidates.csv,
    annotations_excluded.csv, seriesuids.csv, plus synth.json (what was generated).
    A folder holding a previous phantom dataset is replaced; one holding other LUNA16 files
    is refused (SynthError). Nothing is left half-written if generation fails.
    `family` (a name or a lunakit.synth.Family; None = classic) sets the parameter ranges; a
    family other than classic also writes hard_negatives.csv (seriesuid, coordinates, kind of
    each hard negative, all of them class-0 rows of candidates.csv) and records each scan's
    drawn parameters in synth.json.
    """
    return write_dataset(out, n_scans, seed, shape, progress, family).root


def write_dataset(
    out: str | os.PathLike,
    n_scans: int,
    seed: int,
    shape: Sequence[int] | None = None,
    progress: bool = False,
    family: Family | str | None = None,
) -> DatasetSummary:
    """make_dataset, returning counts of what was written."""
    from lunakit.synth.scan import make_scan

    n_scans, seed, shape_irc = check_arguments(n_scans, seed, shape)
    fam = get_family(family)
    if shape_irc is None and fam.slices[1] * max(r * c for r, c in fam.matrices) > MAX_VOXELS:
        raise SynthError(f"synth: family {fam.name} allows scans of more than {MAX_VOXELS} voxels")
    manifest = {"seed": seed, "n_scans": n_scans, "shape": list(shape_irc) if shape_irc else None}
    if not fam.is_classic:
        manifest["family"] = fam.to_dict()
    scans = (make_scan(seed, k, shape_irc, fam) for k in scan_indices(n_scans, progress))
    return write_scans(out, scans, manifest, hard_negatives=not fam.is_classic)


def scan_indices(n_scans: int, progress: bool) -> Iterable[int]:
    """0 .. n_scans - 1, behind a progress bar if asked."""
    if not progress:
        return range(n_scans)
    from tqdm import tqdm

    return tqdm(range(n_scans), desc="phantom scans", unit="scan")


def write_scans(out: str | os.PathLike, scans: Iterable, manifest: dict, hard_negatives: bool) -> DatasetSummary:
    """Write finished scans (lunakit.synth.scan.PhantomScan) and their tables in the LUNA16 layout.

    manifest: what synth.json records besides the files (seed, scan count, family ...);
    hard_negatives: also write hard_negatives.csv. Scan k goes to subset{k % 10}.
    """
    from lunakit.io import ct

    root = Path(out)
    if root.exists() and not root.is_dir():
        raise SynthError(f"{root}: exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    previous = _previous_outputs(root)

    tmp = Path(tempfile.mkdtemp(prefix=".synth-", suffix=".tmp", dir=root))
    try:
        annotations, malignancy, candidates, excluded, uids, files = [], [], [], [], [], []
        hard_rows, scan_params = [], []
        for k, scan in enumerate(scans):
            subset = f"subset{k % 10}"
            (tmp / subset).mkdir(exist_ok=True)
            ct.save(scan.hu, scan.geometry, tmp / subset / f"{scan.series_uid}.mhd")
            files += [f"{subset}/{scan.series_uid}.mhd", f"{subset}/{scan.series_uid}.raw"]
            uids.append(scan.series_uid)
            for n in scan.nodules:
                annotations.append([scan.series_uid, *map(_num, n.center_xyz), _num(n.diameter_mm)])
                malignancy.append(
                    [
                        scan.series_uid,
                        *map(_num, n.center_xyz),
                        _num(n.diameter_mm),
                        "True" if n.is_malignant else "False",
                        str(list(n.ratings)),
                        *map(_num, n.bbox_low_xyz),
                        *map(_num, n.bbox_high_xyz),
                        str(len(n.ratings)),
                    ]
                )
            for center_xyz, cls in scan.candidates:
                candidates.append([scan.series_uid, *map(_num, center_xyz), str(cls)])
            for center_xyz, diameter in scan.excluded:
                excluded.append([scan.series_uid, *map(_num, center_xyz), "-1" if diameter < 0 else _num(diameter)])
            for kind, center_xyz in scan.hard_negatives:
                hard_rows.append([scan.series_uid, *map(_num, center_xyz), kind])
            if scan.params:
                scan_params.append({"seriesuid": scan.series_uid, **scan.params})

        _write_csv(tmp / "annotations.csv", ANNOTATIONS_HEADER, annotations)
        _write_csv(tmp / "annotations_with_malignancy.csv", MALIGNANCY_HEADER, malignancy)
        _write_csv(tmp / "candidates.csv", CANDIDATES_HEADER, candidates)
        _write_csv(tmp / "annotations_excluded.csv", ANNOTATIONS_HEADER, excluded)
        _write_csv(tmp / "seriesuids.csv", None, [[u] for u in uids])
        tables = list(TABLES)
        if hard_negatives:
            _write_csv(tmp / HARD_NEGATIVES, HARD_NEGATIVES_HEADER, hard_rows)
            tables.append(HARD_NEGATIVES)
        manifest = {"generator": "lunakit.synth", "format": 1, **manifest, "files": files + tables}
        if scan_params:
            manifest["scans"] = scan_params
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")

        for name in previous:  # a previous phantom dataset here: remove what it wrote
            (root / name).unlink(missing_ok=True)
        for name in files + tables + [MANIFEST]:
            (root / name).parent.mkdir(exist_ok=True)
            os.replace(tmp / name, root / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    return DatasetSummary(
        root=root,
        scans=len(uids),
        nodules=len(annotations),
        malignant=sum(row[5] == "True" for row in malignancy),
        candidates=len(candidates),
        positive_candidates=sum(row[4] == "1" for row in candidates),
        excluded=len(excluded),
    )


def _num(value: float) -> str:
    """A table number: shortest repr of the value rounded to 6 decimals (deterministic)."""
    v = round(float(value), 6)
    return repr(v + 0.0 if v != 0 else 0.0)


def _write_csv(path: Path, header: list[str] | None, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def _previous_outputs(root: Path) -> list[str]:
    """Files of an earlier phantom dataset in root (to replace); refuse other LUNA16 data."""
    manifest_path = root / MANIFEST
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
            names = [str(n) for n in manifest["files"]]
        except (ValueError, KeyError, TypeError):
            raise SynthError(f"{manifest_path}: unreadable phantom manifest; remove the folder first") from None
        if manifest.get("generator") != "lunakit.synth" or any(
            ".." in Path(n).parts or Path(n).is_absolute() for n in names
        ):
            raise SynthError(f"{manifest_path}: not a lunakit phantom manifest; remove the folder first")
        return names + [MANIFEST]
    clashes = [name for name in TABLES + (HARD_NEGATIVES,) if (root / name).exists()]
    clashes += sorted(p.name for p in root.glob("subset*") if p.is_dir() and any(p.glob("*.mhd")))
    if clashes:
        raise SynthError(f"{root}: already holds {', '.join(clashes)} (not a phantom dataset); refusing to overwrite")
    return []
