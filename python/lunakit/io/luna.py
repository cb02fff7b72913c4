"""LUNA16 tables: annotations, candidates, irrelevant findings, and the scans on disk.

The training data is one list of `CandidateInfo` built the way the book builds it:
every annotated nodule (with its diameter and, where the book's malignancy table
gives it, whether it is malignant) plus every non-nodule candidate (class 0) of
candidates.csv. Class-1 rows of candidates.csv are left out because the
annotations already carry those nodules, with diameters.

Counts on the real tables: annotations.csv has 1,186 nodules; the book's
annotations_with_malignancy.csv has 1,182 rows (the book merged a few annotations of
the same nodule when joining LIDC ratings), 378 of them mal_bool True, and the
unified list built from it holds exactly those 1,182 nodules. The excluded table
(irrelevant findings) has 35,192 rows.

Tables are read with the csv module; columns are found by their header name, in
any order. A malformed table raises `TableError` naming the file, the line and
the column.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from lunakit.errors import LunakitError, TableError

__all__ = [
    "Annotation",
    "Candidate",
    "CandidateInfo",
    "DatasetError",
    "ExcludedFinding",
    "candidate_list",
    "candidates_by_series",
    "find_scans",
    "fold_split",
    "load_candidates",
    "read_annotations",
    "read_candidates",
    "read_excluded",
    "load_excluded",
    "split_series",
    "subset_of",
]

XyzTuple = tuple[float, float, float]

# Column names of the LUNA16 tables.
_UID = "seriesuid"
_XYZ = ("coordX", "coordY", "coordZ")
_DIAMETER = "diameter_mm"
_CLASS = "class"
_MALIGNANT = "mal_bool"

_TRUE_WORDS = {"true", "1", "yes"}
_FALSE_WORDS = {"false", "0", "no"}


class DatasetError(LunakitError):
    """A LUNA16 folder is missing or laid out in a way lunakit cannot read."""


@dataclass(frozen=True)
class Annotation:
    """One row of annotations.csv: a nodule >= 3 mm that the radiologists agreed on.

    is_malignant is None when the table has no mal_bool column (plain annotations.csv)
    or leaves the cell empty.
    """

    series_uid: str
    center_xyz: XyzTuple
    diameter_mm: float
    is_malignant: bool | None = None


@dataclass(frozen=True)
class Candidate:
    """One row of candidates.csv / candidates_V2.csv: a detector's candidate, is_nodule = (class == 1)."""

    series_uid: str
    center_xyz: XyzTuple
    is_nodule: bool


@dataclass(frozen=True)
class ExcludedFinding:
    """One row of annotations_excluded.csv: an irrelevant finding that the official
    evaluation ignores (a candidate hitting it is neither a hit nor a false positive).

    diameter_mm is None where the table says -1 (unknown); the LUNA16 evaluation
    script then uses a 10 mm sphere.
    """

    series_uid: str
    center_xyz: XyzTuple
    diameter_mm: float | None


@dataclass(frozen=True)
class CandidateInfo:
    """One training sample: a nodule from the annotations or a non-nodule candidate.

    diameter_mm is 0.0 when unknown (non-nodules); is_malignant is None when unknown
    (non-nodules, or nodules read from a table without malignancy).
    """

    series_uid: str
    center_xyz: XyzTuple
    is_nodule: bool
    diameter_mm: float = 0.0
    is_malignant: bool | None = None

    def sort_key(self) -> tuple:
        """Nodules first, larger first (as the book sorts), then by series and position."""
        return (not self.is_nodule, -self.diameter_mm, self.series_uid, self.center_xyz)


# --------------------------------------------------------------------------- csv reading


class _Row:
    """A data row of a table, with the helpers that parse its cells and report errors."""

    __slots__ = ("path", "line", "index", "cells")

    def __init__(self, path: Path, line: int, index: dict[str, int], cells: list[str]):
        self.path = path
        self.line = line
        self.index = index  # column name -> position, shared by all rows of a table
        self.cells = cells

    def error(self, column: str, problem: str) -> TableError:
        return TableError(f"{self.path}: line {self.line}, column {column}: {problem}")

    def text(self, column: str) -> str:
        value = self.cells[self.index[column]].strip()
        if not value:
            raise self.error(column, "empty value")
        return value

    def number(self, column: str) -> float:
        value = self.cells[self.index[column]]
        try:
            number = float(value)
        except ValueError:
            if not value.strip():
                raise self.error(column, "empty value") from None
            raise self.error(column, f"not a number: {value.strip()!r}") from None
        if not math.isfinite(number):
            raise self.error(column, f"not a finite number: {value.strip()!r}")
        return number

    def xyz(self) -> XyzTuple:
        return (self.number(_XYZ[0]), self.number(_XYZ[1]), self.number(_XYZ[2]))

    def boolean(self, column: str) -> bool | None:
        value = self.cells[self.index[column]].strip()
        if not value:
            return None
        word = value.lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise self.error(column, f"not a boolean (True/False): {value!r}")


def _rows(path: str | Path, required: Iterable[str]) -> Iterator[_Row]:
    """Rows of a CSV table with a header; checks the file and the required columns first."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: table not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or not any(name.strip() for name in header):
                raise TableError(f"{path}: empty file (no header line)")
            names = [name.strip() for name in header]
            missing = [name for name in required if name not in names]
            if missing:
                raise TableError(f"{path}: missing column(s) {', '.join(missing)} (header has: {', '.join(names)})")
            index = {name: position for position, name in enumerate(names)}
            for cells in reader:
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue  # blank line
                if len(cells) != len(names):
                    raise TableError(
                        f"{path}: line {reader.line_num}: {len(cells)} fields, the header has {len(names)}"
                    )
                yield _Row(path, reader.line_num, index, cells)
    except UnicodeDecodeError as exc:
        raise TableError(f"{path}: not a UTF-8 text table ({exc.reason})") from None
    except csv.Error as exc:
        raise TableError(f"{path}: malformed CSV: {exc}") from None


def _require_rows(path: str | Path, records: list) -> list:
    if not records:
        raise TableError(f"{path}: table has a header but no rows")
    return records


def read_annotations(path: str | Path) -> list[Annotation]:
    """annotations.csv or the book's annotations_with_malignancy.csv (mal_bool -> is_malignant)."""
    records = []
    has_malignancy: bool | None = None
    for row in _rows(path, (_UID, *_XYZ, _DIAMETER)):
        if has_malignancy is None:
            has_malignancy = _MALIGNANT in row.index
        diameter_mm = row.number(_DIAMETER)
        if diameter_mm <= 0:
            raise row.error(_DIAMETER, f"nodule diameter must be > 0, got {diameter_mm}")
        records.append(
            Annotation(
                series_uid=row.text(_UID),
                center_xyz=row.xyz(),
                diameter_mm=diameter_mm,
                is_malignant=row.boolean(_MALIGNANT) if has_malignancy else None,
            )
        )
    return _require_rows(path, records)


def read_candidates(path: str | Path) -> list[Candidate]:
    """candidates.csv (v1) or candidates_V2.csv: seriesuid, coordX, coordY, coordZ, class (0/1)."""
    records = []
    for row in _rows(path, (_UID, *_XYZ, _CLASS)):
        label = row.text(_CLASS)
        if label not in ("0", "1"):
            raise row.error(_CLASS, f"class must be 0 or 1, got {label!r}")
        records.append(Candidate(series_uid=row.text(_UID), center_xyz=row.xyz(), is_nodule=label == "1"))
    return _require_rows(path, records)


def read_excluded(path: str | Path) -> list[ExcludedFinding]:
    """annotations_excluded.csv; a negative diameter (-1 in the file) becomes None."""
    records = []
    for row in _rows(path, (_UID, *_XYZ, _DIAMETER)):
        diameter_mm = row.number(_DIAMETER)
        records.append(
            ExcludedFinding(
                series_uid=row.text(_UID),
                center_xyz=row.xyz(),
                diameter_mm=diameter_mm if diameter_mm >= 0 else None,
            )
        )
    return _require_rows(path, records)


# --------------------------------------------------------------------------- scans on disk

_SUBSET_NUMBER = re.compile(r"subset(\d+)$")


def _subset_dirs(luna_root: str | Path) -> list[Path]:
    root = Path(luna_root)
    if not root.is_dir():
        raise DatasetError(f"{root}: LUNA16 root folder not found")
    return sorted(p for p in root.glob("subset*") if p.is_dir())


def _scan_files(luna_root: str | Path) -> list[tuple[Path, Path]]:
    """(subset dir, .mhd path) for every scan, sorted; refuses an empty root or a duplicated UID."""
    found: dict[str, Path] = {}
    pairs = []
    for subset_dir in _subset_dirs(luna_root):
        for mhd in sorted(subset_dir.glob("*.mhd")):
            uid = mhd.stem
            if uid in found:
                raise DatasetError(f"{mhd}: series {uid} is also in {found[uid]}")
            found[uid] = mhd
            pairs.append((subset_dir, mhd))
    if not pairs:
        raise DatasetError(f"{luna_root}: no scans found (expected subset*/<series_uid>.mhd)")
    return pairs


def find_scans(luna_root: str | Path) -> dict[str, Path]:
    """series_uid -> .mhd path for luna_root/subset*/*.mhd, sorted by series UID."""
    scans = {mhd.stem: mhd for _, mhd in _scan_files(luna_root)}
    return dict(sorted(scans.items()))


def subset_of(luna_root: str | Path) -> dict[str, int]:
    """series_uid -> LUNA16 subset number (subsetN folder), sorted by series UID: the 10 folds."""
    out = {}
    for subset_dir, mhd in _scan_files(luna_root):
        match = _SUBSET_NUMBER.match(subset_dir.name)
        if match is None:
            raise DatasetError(f"{subset_dir}: folder name has no subset number (expected subsetN)")
        out[mhd.stem] = int(match.group(1))
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- the unified list


def candidate_list(
    annotations_path: str | Path,
    candidates_path: str | Path | None = None,
    scans: Collection[str] | Mapping[str, object] | None = None,
) -> list[CandidateInfo]:
    """Nodules from the annotations plus non-nodules (class 0) from candidates.csv, sorted.

    scans, when given (series UIDs, or a find_scans() dict), keeps only those series.
    """
    keep = None if scans is None else set(scans)
    out = [
        CandidateInfo(
            series_uid=a.series_uid,
            center_xyz=a.center_xyz,
            is_nodule=True,
            diameter_mm=a.diameter_mm,
            is_malignant=a.is_malignant,
        )
        for a in read_annotations(annotations_path)
        if keep is None or a.series_uid in keep
    ]
    if candidates_path is not None:
        out.extend(
            CandidateInfo(series_uid=c.series_uid, center_xyz=c.center_xyz, is_nodule=False)
            for c in read_candidates(candidates_path)
            if not c.is_nodule and (keep is None or c.series_uid in keep)
        )
    out.sort(key=CandidateInfo.sort_key)
    return out


def _first_existing(root: Path, names: Iterable[str]) -> Path | None:
    for name in names:
        if (root / name).is_file():
            return root / name
    return None


def load_excluded(luna_root: str | Path) -> list[ExcludedFinding]:
    """annotations_excluded.csv of a LUNA16 root; no findings when the root has no such table."""
    path = Path(luna_root) / "annotations_excluded.csv"
    return read_excluded(path) if path.is_file() else []


def load_candidates(luna_root: str | Path, with_candidates: bool = True) -> list[CandidateInfo]:
    """The unified list for a LUNA16 root holding the tables and subset*/ scans, restricted to
    scans on disk. Prefers annotations_with_malignancy.csv over annotations.csv and
    candidates_V2.csv over candidates.csv; with_candidates=False gives the nodules only.
    """
    root = Path(luna_root)
    scans = find_scans(root)
    annotations = _first_existing(root, ("annotations_with_malignancy.csv", "annotations.csv"))
    if annotations is None:
        raise TableError(f"{root}: no annotations_with_malignancy.csv or annotations.csv")
    candidates = None
    if with_candidates:
        candidates = _first_existing(root, ("candidates_V2.csv", "candidates.csv"))
        if candidates is None:
            raise TableError(f"{root}: no candidates_V2.csv or candidates.csv")
    return candidate_list(annotations, candidates, scans=scans)


def candidates_by_series(cands: Iterable[CandidateInfo]) -> dict[str, list[CandidateInfo]]:
    """series_uid -> its candidates, in the order given."""
    out: dict[str, list[CandidateInfo]] = {}
    for cand in cands:
        out.setdefault(cand.series_uid, []).append(cand)
    return out


# --------------------------------------------------------------------------- train/val splits


def split_series(series_uids: Iterable[str], val_stride: int = 10) -> tuple[list[str], list[str]]:
    """(train, val): of the sorted unique UIDs, every val_stride-th (index % val_stride == 0)
    goes to validation, as the book splits."""
    if not isinstance(val_stride, int) or val_stride < 1:
        raise LunakitError(f"val_stride must be an integer >= 1, got {val_stride!r}")
    ordered = sorted(set(series_uids))
    train = [uid for i, uid in enumerate(ordered) if i % val_stride != 0]
    val = [uid for i, uid in enumerate(ordered) if i % val_stride == 0]
    return train, val


def fold_split(subsets: Mapping[str, int], fold: int) -> tuple[list[str], list[str]]:
    """(train, val) with the LUNA16 subsets as folds: subset `fold` validates, the rest train."""
    folds = sorted(set(subsets.values()))
    if fold not in folds:
        raise LunakitError(f"fold {fold} not among the subsets present: {folds}")
    train = sorted(uid for uid, subset in subsets.items() if subset != fold)
    val = sorted(uid for uid, subset in subsets.items() if subset == fold)
    return train, val
