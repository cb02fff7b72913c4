"""Turning an uploaded scan into files `lunakit.io.ct.load` can read, without trusting the upload.

Two forms are accepted (docs/serving.md):
- a zip archive of one DICOM series. Member names are only checked, never used as paths: every
  file is written as `NNNNN.dcm` into a fresh folder, so a name like `../../etc/passwd` can do
  nothing; such a name, an absolute one, a symlink member, an encrypted member, a corrupt
  archive, a member that is not DICOM, too many members or too many uncompressed bytes is
  refused with an `UploadError` carrying the HTTP status to answer.
- a MetaImage header (.mhd) and its data file (.raw / .zraw), as two uploaded files. The
  header must name the data file by a bare file name, which must be the uploaded one.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable

from lunakit.errors import LunakitError

DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
IGNORED_ZIP_ENTRIES = ("__MACOSX/",)  # resource forks that macOS's Archive Utility adds
IGNORED_FILE_NAMES = (".DS_Store", "Thumbs.db")
COPY_CHUNK = 1 << 20


class UploadError(LunakitError):
    """An upload the server refuses; `status` is the HTTP status code to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on what one uploaded scan may unpack to."""

    max_members: int = 5000
    max_uncompressed_bytes: int = 4 << 30


@dataclass(frozen=True)
class UploadedFile:
    """A file of a multipart upload: the name the client gave and where its bytes lie."""

    filename: str
    path: Path


def unsafe_name_reason(name: str) -> str | None:
    """Why a member name could escape an extraction folder, or None when it is harmless."""
    if not name or "\x00" in name:
        return "empty name or NUL byte"
    normalized = name.replace("\\", "/")
    if normalized.startswith("/"):
        return "absolute path"
    if re.match(r"^[A-Za-z]:", normalized):
        return "drive letter"
    if ".." in PurePosixPath(normalized).parts:
        return "parent-folder (..) component"
    return None


def is_dicom_file(path: Path) -> bool:
    """True when the file carries the DICOM Part 10 preamble ('DICM' at byte 128)."""
    with open(path, "rb") as handle:
        head = handle.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
    return head[DICOM_MAGIC_OFFSET:] == DICOM_MAGIC


def _ignored(name: str) -> bool:
    return name.startswith(IGNORED_ZIP_ENTRIES) or PurePosixPath(name.replace("\\", "/")).name in IGNORED_FILE_NAMES


def _copy_limited(source: BinaryIO, target: Path, budget: int, what: str) -> int:
    """Copy source into target; UploadError(413) once more than `budget` bytes came out."""
    written = 0
    with open(target, "wb") as out:
        while True:
            block = source.read(COPY_CHUNK)
            if not block:
                return written
            written += len(block)
            if written > budget:
                raise UploadError(f"{what}: unpacks to more than the limit of bytes per scan", status=413)
            out.write(block)


def extract_dicom_zip(archive: Path, dest: Path, limits: UploadLimits = UploadLimits(), label: str = "upload") -> int:
    """Check `archive` and write its DICOM files into `dest` (flat, renamed); returns how many.

    `label` names the upload in error messages (never the server's temporary path).
    """
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise UploadError(f"{label}: not a valid zip archive") from None
    except OSError as exc:
        raise UploadError(f"{label}: cannot read the archive ({exc.strerror or exc})") from None
    with zf:
        members = zf.infolist()
        if len(members) > limits.max_members:
            raise UploadError(f"{label}: {len(members)} members, more than the limit of {limits.max_members}", 413)
        files: list[zipfile.ZipInfo] = []
        for info in members:
            reason = unsafe_name_reason(info.filename)
            if reason is not None:
                raise UploadError(f"{label}: member {info.filename!r} is refused ({reason})")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UploadError(f"{label}: member {info.filename!r} is a symbolic link")
            if info.is_dir() or _ignored(info.filename):
                continue
            if info.flag_bits & 0x1:
                raise UploadError(f"{label}: member {info.filename!r} is encrypted")
            files.append(info)
        if not files:
            raise UploadError(f"{label}: the zip archive holds no files")
        declared = sum(info.file_size for info in files)
        if declared > limits.max_uncompressed_bytes:
            raise UploadError(
                f"{label}: unpacks to {declared} bytes, more than the limit of {limits.max_uncompressed_bytes}", 413
            )
        dest.mkdir(parents=True, exist_ok=True)
        budget = limits.max_uncompressed_bytes
        for number, info in enumerate(files):
            target = dest / f"{number:05d}.dcm"
            try:
                with zf.open(info) as source:
                    budget -= _copy_limited(source, target, budget, label)
            except UploadError:
                raise
            except OSError as exc:
                raise UploadError(f"{label}: member {info.filename!r} cannot be unpacked ({exc})") from None
            except Exception as exc:  # BadZipFile (CRC), zlib.error, EOFError, unsupported compression
                raise UploadError(f"{label}: member {info.filename!r} is corrupt ({exc})") from None
            if not is_dicom_file(target):
                raise UploadError(
                    f"{label}: member {info.filename!r} is not a DICOM file (no DICM preamble)", status=415
                )
        return len(files)


def _clean_filename(name: str) -> str:
    """An uploaded file's name as a bare file name; refuses anything path-like."""
    reason = unsafe_name_reason(name)
    if reason is not None or "/" in name or "\\" in name or name in (".", ".."):
        raise UploadError(f"uploaded file name {name!r} is refused (must be a bare file name)")
    return name


def _mhd_data_file(header: Path, label: str) -> str:
    try:
        text = header.read_bytes()[:65536].decode("latin-1")
    except OSError as exc:
        raise UploadError(f"{label}: cannot read the header ({exc})") from None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "ElementDataFile":
            return value.strip()
    raise UploadError(f"{label}: MetaImage header has no ElementDataFile line")


def place_metaimage(files: Iterable[UploadedFile], dest: Path) -> Path:
    """Put an uploaded .mhd and its data file into `dest`; returns the header's path there."""
    files = list(files)
    headers = [f for f in files if f.filename.lower().endswith(".mhd")]
    if len(headers) != 1:
        names = ", ".join(repr(f.filename) for f in files) or "none"
        raise UploadError(f"expected one .mhd header and its data file, got: {names}")
    header = headers[0]
    header_name = _clean_filename(header.filename)
    data_name = _mhd_data_file(header.path, header_name)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(header.path, dest / header_name)
    if data_name == "LOCAL":  # the voxels follow the header in the same file
        return dest / header_name
    if data_name.upper() == "LIST" or "%" in data_name:
        raise UploadError(f"{header_name}: multi-file ElementDataFile {data_name!r} is not supported")
    if "/" in data_name or "\\" in data_name or unsafe_name_reason(data_name) is not None:
        raise UploadError(f"{header_name}: ElementDataFile {data_name!r} must be a bare file name")
    by_name = {f.filename: f for f in files if f is not header}
    if data_name not in by_name:
        raise UploadError(
            f"{header_name}: its data file {data_name!r} was not uploaded "
            f"(got {', '.join(repr(n) for n in by_name) or 'nothing else'})"
        )
    shutil.copyfile(by_name[data_name].path, dest / _clean_filename(data_name))
    return dest / header_name
