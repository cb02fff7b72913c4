"""The tables of a LUNA16 evaluation: series list, annotations, irrelevant findings, candidates.

Columns are found by their header name, in any order (extra columns are ignored).
Every row is checked where it enters: a missing column, a short row, a value that
is not a finite number raises `TableError` naming the file, the line and the
column, so a malformed submission never produces a number.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lunakit.errors import TableError

__all__ = [
    "AnnotationTable",
    "CandidateTable",
    "read_annotations_table",
    "read_candidates_table",
    "read_series_list",
]

_UID = "seriesuid"
_XYZ = ("coordX", "coordY", "coordZ")
_DIAMETER = "diameter_mm"
_PROBABILITY = "probability"


@dataclass(frozen=True, eq=False)
class AnnotationTable:
    """Nodule annotations (or irrelevant findings): one sphere per row.

    `line` holds the 1-based line of each row in `source`, for error messages.
    A negative diameter is kept as read; the FROC rules read it as 10 mm.
    """

    source: str
    seriesuid: tuple[str, ...]
    center_xyz: np.ndarray  # (N, 3) float64, mm
    diameter_mm: np.ndarray  # (N,) float64
    line: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.seriesuid)

    @classmethod
    def build(
        cls,
        seriesuid: Sequence[str],
        center_xyz: Sequence[Sequence[float]] | np.ndarray,
        diameter_mm: Sequence[float] | np.ndarray,
        source: str = "<annotations>",
    ) -> AnnotationTable:
        """A table from arrays in memory, checked like a file."""
        return cls(source, *_checked_rows(seriesuid, center_xyz, diameter_mm, source, _DIAMETER))


@dataclass(frozen=True, eq=False)
class CandidateTable:
    """CAD marks in the LUNA16 submission format: seriesuid, center, probability (score)."""

    source: str
    seriesuid: tuple[str, ...]
    center_xyz: np.ndarray  # (N, 3) float64, mm
    probability: np.ndarray  # (N,) float64
    line: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.seriesuid)

    @classmethod
    def build(
        cls,
        seriesuid: Sequence[str],
        center_xyz: Sequence[Sequence[float]] | np.ndarray,
        probability: Sequence[float] | np.ndarray,
        source: str = "<candidates>",
    ) -> CandidateTable:
        """A table from arrays in memory (e.g. the findings of `lunakit analyze`), checked like a file."""
        return cls(source, *_checked_rows(seriesuid, center_xyz, probability, source, _PROBABILITY))


def _checked_rows(
    seriesuid: Sequence[str],
    center_xyz: Sequence[Sequence[float]] | np.ndarray,
    column: Sequence[float] | np.ndarray,
    source: str,
    column_name: str,
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
    """(uids, centers, the value column, 1-based line numbers) of in-memory rows, checked."""
    uids = tuple(str(u) for u in seriesuid)
    centers = _as_centers(center_xyz, len(uids), source)
    values = _as_column(column, len(uids), source, column_name)
    return uids, centers, values, np.arange(1, len(uids) + 1, dtype=np.int64)


def read_series_list(path: str | Path) -> list[str]:
    """The scans of the evaluation: one series UID per line, no header.

    Blank lines are skipped; every other line is one scan, and a UID listed twice
    counts as two scans (the official script loops over the rows as they are).
    """
    path = Path(path)
    text = _read_text(path)
    series: list[str] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        uid = line.split(",")[0].strip()
        if not uid:
            if line.strip():
                raise TableError(f"{path}: line {line_no}: empty series UID")
            continue
        if uid == _UID:
            raise TableError(f"{path}: line {line_no}: the series list has no header, found '{uid}'")
        series.append(uid)
    if not series:
        raise TableError(f"{path}: the series list is empty")
    return series


def read_annotations_table(path: str | Path) -> AnnotationTable:
    """annotations.csv or annotations_excluded.csv: seriesuid, coordX, coordY, coordZ, diameter_mm."""
    path = Path(path)
    uids, values, lines = _read_columns(path, (*_XYZ, _DIAMETER))
    return AnnotationTable(str(path), uids, values[:, :3], values[:, 3].copy(), lines)


def read_candidates_table(path: str | Path) -> CandidateTable:
    """A LUNA16 submission: seriesuid, coordX, coordY, coordZ, probability."""
    path = Path(path)
    uids, values, lines = _read_columns(path, (*_XYZ, _PROBABILITY))
    return CandidateTable(str(path), uids, values[:, :3], values[:, 3].copy(), lines)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TableError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TableError(f"{path}: is a directory, expected a CSV file") from None
    except OSError as exc:
        raise TableError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TableError(f"{path}: not a UTF-8 text file (byte {exc.start})") from None


def _read_columns(path: Path, numeric: tuple[str, ...]) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """seriesuid plus the named numeric columns of a CSV with a header, every value checked."""
    text = _read_text(path)
    reader = csv.reader(text.splitlines())
    header: list[str] | None = None
    for row in reader:
        if any(cell.strip() for cell in row):
            header = [cell.strip() for cell in row]
            break
    if header is None:
        raise TableError(f"{path}: empty file, expected a header row")
    wanted = (_UID, *numeric)
    missing = [name for name in wanted if name not in header]
    if missing:
        raise TableError(f"{path}: missing column(s) {', '.join(missing)} in header line {reader.line_num}")
    index = [header.index(name) for name in wanted]
    needed = max(index) + 1

    uids: list[str] = []
    values: list[list[float]] = []
    lines: list[int] = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        line_no = reader.line_num
        if len(row) < needed:
            raise TableError(f"{path}: line {line_no}: {len(row)} fields, expected at least {needed}")
        uid = row[index[0]].strip()
        if not uid:
            raise TableError(f"{path}: line {line_no}: empty {_UID}")
        numbers = []
        for name, col in zip(numeric, index[1:]):
            cell = row[col].strip()
            try:
                value = float(cell)
            except ValueError:
                raise TableError(f"{path}: line {line_no}: {name} '{cell}' is not a number") from None
            if not math.isfinite(value):
                raise TableError(f"{path}: line {line_no}: {name} is {cell}, expected a finite number")
            numbers.append(value)
        uids.append(uid)
        values.append(numbers)
        lines.append(line_no)
    array = np.asarray(values, dtype=np.float64).reshape(len(values), len(numeric))
    return tuple(uids), array, np.asarray(lines, dtype=np.int64)


def _as_centers(center_xyz, n: int, source: str) -> np.ndarray:
    try:
        centers = np.asarray(center_xyz, dtype=np.float64)
    except (TypeError, ValueError):
        raise TableError(f"{source}: center_xyz is not an (N, 3) array of numbers") from None
    if n == 0 and centers.size == 0:
        return np.zeros((0, 3))
    if centers.shape != (n, 3):
        raise TableError(f"{source}: center_xyz has shape {centers.shape}, expected ({n}, 3)")
    bad = np.flatnonzero(~np.isfinite(centers).all(axis=1))
    if bad.size:
        raise TableError(f"{source}: row {bad[0] + 1}: center_xyz is not finite")
    return centers.copy()


def _as_column(column, n: int, source: str, name: str) -> np.ndarray:
    try:
        values = np.asarray(column, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TableError(f"{source}: {name} is not a list of numbers") from None
    if values.shape != (n,):
        raise TableError(f"{source}: {name} has {values.shape[0]} values, expected {n}")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise TableError(f"{source}: row {bad[0] + 1}: {name} is not finite")
    return values.copy()
