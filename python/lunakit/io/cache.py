"""A disk cache of CT volumes as int16 .npy files, read back memory-mapped.

Parsing a LUNA16 .mhd/.raw scan takes about a second; training reads thousands of
small crops from the same few hundred scans, so each scan is converted once
(`lunakit prepcache`) and then opened with np.load(mmap_mode='r'), which reads only
the pages a crop touches.

Layout of a cache folder, one entry per series:

    <uid>.npy    int16 [I, R, C] HU
    <uid>.json   geometry (Geometry.to_dict), size, and the source files' sizes and
                 mtimes, so that an entry whose scan changed is seen as stale

Writes are atomic: each file goes to a temporary name in the cache folder and is
renamed into place. The .json is the commit record: it is removed before its
.npy is replaced and written after, so an entry is complete exactly when both
files exist. An interrupted write leaves only a temporary file
(`.<uid>.<pid>.<random>.tmp`), which readers ignore and `prepcache` removes once
the process that wrote it is gone.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lunakit.errors import LunakitError
from lunakit.io import ct

__all__ = ["CacheError", "StaleEntryError", "PrepcacheStats", "VolumeCache", "prepcache"]

FORMAT_VERSION = 1

# A series UID becomes a file name: allow what DICOM UIDs and LUNA16 names use, nothing that
# could leave the folder or hide the file.
_SAFE_UID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_TEMP_NAME = re.compile(r"^\.(?P<uid>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


class CacheError(LunakitError):
    """A cache folder or entry is missing, unusable or damaged."""


class StaleEntryError(CacheError):
    """The scan a cache entry was made from has changed since."""


def _source_files(source: Path) -> list[Path]:
    """The files whose change makes a cached volume stale: the scan file, the .raw of a
    .mhd, or every file of a DICOM directory."""
    if source.is_dir():
        return sorted(p for p in source.iterdir() if p.is_file())
    files = [source]
    if source.suffix.lower() == ".mhd":
        try:
            header = source.read_text(errors="replace")
        except OSError:
            return files
        for line in header.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "ElementDataFile":
                name = value.strip()
                if name and name.upper() != "LOCAL" and (source.parent / name).is_file():
                    files.append(source.parent / name)
                break
    return files


def _fingerprint(source: Path) -> list[dict[str, Any]]:
    """Path, size and mtime of each source file, as recorded in an entry."""
    out = []
    for path in _source_files(source.resolve()):
        stat = path.stat()
        out.append({"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return out


def _same_files(now: list[dict[str, Any]], recorded: Any) -> bool:
    """Same file names, sizes and mtimes (the folder may have moved: the cache stays valid)."""
    if not isinstance(recorded, list):
        return False
    try:
        then = [(Path(f["path"]).name, f["size"], f["mtime_ns"]) for f in recorded]
    except (KeyError, TypeError):
        return False
    return [(Path(f["path"]).name, f["size"], f["mtime_ns"]) for f in now] == then


def _file_uid(path: Path) -> str:
    """Series UID of a scan file as find_scans names it: the file name without its extension."""
    name = path.name
    for suffix in (".nii.gz", ".mhd", ".nii", ".nrrd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class VolumeCache:
    """int16 volumes with their geometry, one .npy + .json pair per series UID."""

    def __init__(self, cache_dir: str | os.PathLike, create: bool = True):
        self.cache_dir = Path(cache_dir)
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise CacheError(f"{self.cache_dir}: cache path exists and is not a directory")
        if not self.cache_dir.is_dir():
            if not create:
                raise CacheError(f"{self.cache_dir}: cache directory not found")
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CacheError(f"{self.cache_dir}: cannot create cache directory: {exc.strerror or exc}") from None

    def __repr__(self) -> str:
        return f"VolumeCache({str(self.cache_dir)!r})"

    # -- paths --
    def _paths(self, series_uid: str) -> tuple[Path, Path]:
        if not isinstance(series_uid, str) or not _SAFE_UID.match(series_uid):
            raise CacheError(f"{self.cache_dir}: series UID {series_uid!r} cannot name a cache file")
        return self.cache_dir / f"{series_uid}.npy", self.cache_dir / f"{series_uid}.json"

    def _temp_file(self, series_uid: str, suffix: str) -> tuple[int, Path]:
        fd, name = tempfile.mkstemp(prefix=f".{series_uid}{suffix}.{os.getpid()}.", suffix=".tmp", dir=self.cache_dir)
        return fd, Path(name)

    # -- queries --
    def __contains__(self, series_uid: object) -> bool:
        """A complete entry exists (it may still be stale: see is_current)."""
        if not isinstance(series_uid, str) or not _SAFE_UID.match(series_uid):
            return False
        npy, meta = self._paths(series_uid)
        return npy.is_file() and meta.is_file()

    def series_uids(self) -> list[str]:
        """UIDs of the complete entries, sorted."""
        return sorted(p.stem for p in self.cache_dir.glob("*.json") if p.stem in self)

    def __iter__(self) -> Iterator[str]:
        return iter(self.series_uids())

    def __len__(self) -> int:
        return len(self.series_uids())

    def metadata(self, series_uid: str) -> dict[str, Any]:
        """The entry's JSON record; CacheError when missing or unreadable."""
        npy, meta = self._paths(series_uid)
        if not (npy.is_file() and meta.is_file()):
            raise CacheError(f"{self.cache_dir}: series {series_uid} is not cached")
        try:
            record = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            raise CacheError(f"{meta}: unreadable cache record: {exc}") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT_VERSION:
            found = record.get("format") if isinstance(record, dict) else None
            raise CacheError(f"{meta}: cache record format {found!r}, expected {FORMAT_VERSION}")
        return record

    def is_current(
        self, series_uid: str, source: str | os.PathLike | None = None, resample_mm: Sequence[float] | None = None
    ) -> bool:
        """Complete, resampled to `resample_mm` (None: the scan's own voxels), and its source files
        (`source`, default the recorded one) have the sizes and mtimes recorded when it was made.

        With no source named, an entry whose recorded source is gone counts as current:
        the cache may outlive the raw scans. A named source that does not exist is not.
        """
        if series_uid not in self:
            return False
        try:
            record = self.metadata(series_uid)
        except CacheError:
            return False
        if record.get("resample_mm") != _spacing(resample_mm):
            return False
        return self._npy_complete(series_uid, record) and self._source_unchanged(record, source)

    def _source_unchanged(self, record: dict[str, Any], source: str | os.PathLike | None) -> bool:
        recorded = record.get("source") or {}
        if source is None:
            if not recorded.get("path") or not Path(recorded["path"]).exists():
                return True
            source_path = Path(recorded["path"])
        else:
            source_path = Path(source)
            if not source_path.exists():
                return False
        try:
            return _same_files(_fingerprint(source_path), recorded.get("files"))
        except OSError:
            return False

    def _npy_complete(self, series_uid: str, record: dict[str, Any]) -> bool:
        npy, _ = self._paths(series_uid)
        try:
            return npy.stat().st_size == record.get("npy_bytes")
        except OSError:
            return False

    # -- reading --
    def get(self, series_uid: str) -> ct.CtScan:
        """The cached scan: hu is a read-only memory map of the .npy, never a re-parse of the source.

        Raises CacheError when the entry is missing or damaged, StaleEntryError when its
        source still exists but changed (run `lunakit prepcache` again, or use load()).
        """
        record = self.metadata(series_uid)
        npy, meta = self._paths(series_uid)
        source_path = (record.get("source") or {}).get("path") or ""
        if not self._npy_complete(series_uid, record):
            raise CacheError(f"{npy}: damaged cache entry: file size differs from its record (truncated?)")
        if not self._source_unchanged(record, None):
            raise StaleEntryError(f"{npy}: stale cache entry, {source_path} changed since it was cached")
        try:
            hu = np.load(npy, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CacheError(f"{npy}: damaged cache entry: {exc}") from None
        if hu.dtype != np.int16 or list(hu.shape) != record.get("size_irc"):
            raise CacheError(
                f"{npy}: damaged cache entry: {hu.dtype} {list(hu.shape)}, record says int16 {record.get('size_irc')}"
            )
        try:
            geometry = ct.Geometry.from_dict(record["geometry"])
        except (KeyError, LunakitError) as exc:
            raise CacheError(f"{meta}: bad geometry in cache record: {exc}") from None
        return ct.CtScan(hu=hu, geometry=geometry, series_uid=series_uid, path=source_path)

    def load(self, source: str | os.PathLike, series_uid: str | None = None) -> ct.CtScan:
        """Get-or-build: the cached scan of a scan file (entry named by the file name, as
        find_scans names it) or of a DICOM directory (series_uid required), converting it
        first when it is not cached or is stale."""
        source = Path(source)
        if series_uid is None:
            if source.is_dir():
                raise CacheError(f"{source}: a DICOM directory needs series_uid to name its cache entry")
            uid = _file_uid(source)
        else:
            uid = series_uid
        if not self.is_current(uid, source):
            scan = ct.load(source, series_uid=series_uid if source.is_dir() else None)
            self.put(scan, source=source, series_uid=uid)
        return self.get(uid)

    # -- writing --
    def put(
        self,
        scan: ct.CtScan,
        source: str | os.PathLike | None = None,
        series_uid: str | None = None,
        resample_mm: Sequence[float] | None = None,
    ) -> Path:
        """Store a scan (atomically); returns the .npy path.

        source (default scan.path) is the file or DICOM directory whose sizes and mtimes
        are recorded; series_uid (default scan.series_uid) names the entry. With resample_mm the
        scan is stored resampled to that spacing (io.ct.resampled), and the record says so.
        """
        if resample_mm is not None:
            scan = ct.resampled(scan, resample_mm)
        uid = series_uid if series_uid is not None else scan.series_uid
        npy, meta = self._paths(uid)
        hu = np.asarray(scan.hu)
        if hu.ndim != 3 or hu.dtype != np.int16:
            raise CacheError(f"{npy}: volume must be int16 [I, R, C], got {hu.dtype} {list(hu.shape)}")
        source_path = Path(source) if source is not None else Path(scan.path) if scan.path else None
        if source_path is not None and source_path.exists():
            source_text: str | None = str(source_path.resolve())
            files = _fingerprint(source_path)
        else:  # made in memory, or its file is gone: nothing to compare against later
            source_text, files = None, []
        record = {
            "format": FORMAT_VERSION,
            "series_uid": uid,
            "size_irc": [int(n) for n in hu.shape],
            "dtype": "int16",
            "geometry": scan.geometry.to_dict(),
            "resample_mm": _spacing(resample_mm),
            "source": {"path": source_text, "files": files},
        }

        meta.unlink(missing_ok=True)  # uncommit first: a half-replaced entry is never "complete"
        self._write_atomic(uid, ".npy", npy, lambda handle: np.save(handle, np.ascontiguousarray(hu)))
        record["npy_bytes"] = npy.stat().st_size
        text = json.dumps(record, indent=1).encode()
        self._write_atomic(uid, ".json", meta, lambda handle: handle.write(text))
        return npy

    def _write_atomic(self, uid: str, suffix: str, target: Path, write: Callable[[Any], Any]) -> None:
        fd, tmp = self._temp_file(uid, suffix)
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise CacheError(f"{target}: cannot write cache entry: {exc.strerror or exc}") from None
            raise

    def remove(self, series_uid: str) -> None:
        """Drop an entry (record first, so no reader sees half of it)."""
        npy, meta = self._paths(series_uid)
        meta.unlink(missing_ok=True)
        npy.unlink(missing_ok=True)

    def remove_temp_files(self) -> list[Path]:
        """Delete temporary files left by writers that are no longer running; returns them."""
        removed = []
        for path in sorted(self.cache_dir.glob(".*.tmp")):
            match = _TEMP_NAME.match(path.name)
            if match is None or _pid_alive(int(match.group("pid"))):
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
        return removed


# ---------------------------------------------------------------------------------------------
# prepcache: convert a whole LUNA16 tree once


@dataclass(frozen=True)
class PrepcacheStats:
    """What one prepcache run did."""

    total: int
    converted: int
    cached_already: int
    failed: tuple[tuple[str, str], ...] = field(default=())  # (series_uid, error message)
    temp_files_removed: int = 0

    def summary(self) -> str:
        text = f"converted {self.converted}, cached already {self.cached_already} (of {self.total} scans)"
        if self.failed:
            text += f", failed {len(self.failed)}"
        return text


def _spacing(resample_mm: Sequence[float] | None) -> list[float] | None:
    """How a record writes a resampling spacing (JSON-comparable)."""
    return None if resample_mm is None else [float(v) for v in resample_mm]


def _convert(
    cache_dir: str, series_uid: str, source: str, resample_mm: Sequence[float] | None = None
) -> tuple[str, str | None]:
    """Convert one scan; (uid, error message or None). Runs in a worker process too."""
    try:
        cache = VolumeCache(cache_dir)
        scan = ct.load(source, series_uid=series_uid)
        cache.put(scan, source=source, series_uid=series_uid, resample_mm=resample_mm)
    except LunakitError as exc:
        return series_uid, str(exc)
    return series_uid, None


def prepcache(
    luna_root: str | os.PathLike,
    cache_dir: str | os.PathLike,
    progress: bool = False,
    workers: int = 0,
    resample_mm: Sequence[float] | None = None,
) -> PrepcacheStats:
    """Convert every scan of luna_root/subset*/ into the cache, skipping entries that are
    complete and up to date (so an interrupted run resumes where it stopped). With resample_mm,
    each is stored resampled to that spacing (the pipeline option of the same name).

    A scan that cannot be read is reported in stats.failed and the others are still
    converted. workers > 0 converts in that many processes.
    """
    from tqdm import tqdm

    from lunakit.io.luna import find_scans

    scans = find_scans(luna_root)
    cache = VolumeCache(cache_dir)
    removed = cache.remove_temp_files()
    todo = {uid: path for uid, path in scans.items() if not cache.is_current(uid, path, resample_mm)}
    failed: list[tuple[str, str]] = []
    bar = tqdm(total=len(todo), desc="prepcache", unit="scan", disable=not progress, file=sys.stderr)
    try:
        if workers > 0 and len(todo) > 1:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [
                    pool.submit(_convert, str(cache.cache_dir), uid, str(p), resample_mm) for uid, p in todo.items()
                ]
                for future in as_completed(futures):
                    uid, error = future.result()
                    if error:
                        failed.append((uid, error))
                    bar.update(1)
        else:
            for uid, path in todo.items():
                uid, error = _convert(str(cache.cache_dir), uid, str(path), resample_mm)
                if error:
                    failed.append((uid, error))
                bar.update(1)
    finally:
        bar.close()
    failed.sort()
    return PrepcacheStats(
        total=len(scans),
        converted=len(todo) - len(failed),
        cached_already=len(scans) - len(todo),
        failed=tuple(failed),
        temp_files_removed=len(removed),
    )
