"""CT input: read a scan into int16 HU [I, R, C] with its patient-space geometry (io/geometry.py,
re-exported here as ct.Geometry), and write one back."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lunakit.errors import ScanError
from lunakit.io import dicom_file
from lunakit.io.geometry import Geometry, GeometryError
from lunakit.io.metaimage import check as _check_mhd
from lunakit.io.metaimage import read_header

# ---------------------------------------------------------------------------------------------
# Writing


_SUFFIXES = (".mhd", ".nii.gz", ".nii", ".nrrd")


def _format_suffix(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def _stem(path: Path) -> str:
    suffix = _format_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.stem


def save(hu: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> Path:
    """Write an int16 [I, R, C] volume with its geometry to .mhd (+ .raw), .nii.gz, .nii or .nrrd.

    Writes under a temporary directory next to the target, then renames, so a failure
    leaves no partial file behind. Returns the path written.
    """
    import SimpleITK as sitk

    target = Path(path)
    suffix = _format_suffix(target)
    if suffix is None:
        raise ScanError(f"{target}: unknown extension (expected one of {', '.join(_SUFFIXES)})")
    volume = np.asarray(hu)
    if volume.ndim != 3:
        raise ScanError(f"{target}: volume must be 3D [I, R, C], got shape {tuple(volume.shape)}")
    if volume.dtype != np.int16:
        if not np.issubdtype(volume.dtype, np.integer):
            raise ScanError(f"{target}: volume must be int16 HU, got dtype {volume.dtype}")
        info = np.iinfo(np.int16)
        if volume.size and (volume.min() < info.min or volume.max() > info.max):
            raise ScanError(f"{target}: HU values do not fit int16")
        volume = volume.astype(np.int16)
    if not isinstance(geometry, Geometry):
        raise ScanError(f"{target}: geometry must be a lunakit.io.ct.Geometry")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ScanError(f"{target}: directory {parent} does not exist")

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume), isVector=False)
    geometry.apply_to_sitk(image)

    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        tmp_file = tmp_dir / target.name
        try:
            sitk.WriteImage(image, str(tmp_file), useCompression=(suffix == ".nii.gz"))
        except RuntimeError as exc:
            raise ScanError(f"{target}: cannot write: {_sitk_message(exc)}") from None
        if suffix == ".mhd":
            # The header names its data file by basename; keep the pair together.
            raw_name = read_header(tmp_file).fields["ElementDataFile"]
            tmp_raw = tmp_dir / raw_name
            if not tmp_raw.is_file():
                raise ScanError(f"{target}: SimpleITK wrote no data file {raw_name}")
            os.replace(tmp_raw, parent / raw_name)
        os.replace(tmp_file, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


def _sitk_message(exc: BaseException) -> str:
    """The meaningful part of a SimpleITK/ITK exception, in one line (they span many lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Exception thrown in SimpleITK")]
    nrrd = [ln for ln in lines if ln.startswith("[nrrd]")]
    if nrrd:  # teem's trace: the last line holds the cause
        cause = nrrd[-1].removeprefix("[nrrd]").strip()
        lines = [ln for ln in lines if not ln.startswith("[nrrd]")] + [cause.split(": ", 1)[-1]]
    parts: list[str] = []
    for ln in lines:
        if ln.startswith(("ITK ERROR:", "itk::ERROR:", "sitk::ERROR:")):
            ln = ln.split(":", 1)[1].strip()
            # "MetaImageIO(0x55...): message" -> "message"
            head, sep, tail = ln.partition("): ")
            if sep and "(0x" in head:
                ln = tail
        elif ln.startswith("Reason:") and ln.split(":", 1)[1].strip() in ("", "Success"):
            continue
        parts.append(ln.rstrip(":").strip())
        if len(parts) == 2:
            break
    if any("determinant is 0" in ln for ln in lines):
        return "direction matrix is singular (determinant is 0)"
    text = "; ".join(parts) if parts else type(exc).__name__
    return text.replace("\n", " ")


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(eq=False)
class CtScan:
    """One CT volume in Hounsfield units, int16 [I, R, C], with where it sits in patient space."""

    hu: np.ndarray
    geometry: Geometry
    series_uid: str
    path: str

    @property
    def size_irc(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.hu.shape)  # type: ignore[return-value]

    def info(self) -> dict[str, Any]:
        """Size, geometry, series UID and HU range as plain JSON-able Python values."""
        g = self.geometry.to_dict()
        return {
            "path": self.path,
            "series_uid": self.series_uid,
            "size_irc": list(self.size_irc),
            "spacing_xyz": g["spacing_xyz"],
            "origin_xyz": g["origin_xyz"],
            "direction": g["direction"],
            "hu_min": int(self.hu.min()) if self.hu.size else None,
            "hu_max": int(self.hu.max()) if self.hu.size else None,
        }


_IMAGE_IO = {".mhd": "MetaImageIO", ".nii": "NiftiImageIO", ".nii.gz": "NiftiImageIO", ".nrrd": "NrrdImageIO"}
_SERIES_UID_TAG = "0020|000e"


class _QuietITK:
    """Silence ITK's warnings (printed straight to stderr) while we read; restore afterwards."""

    def __enter__(self) -> None:
        import SimpleITK as sitk

        self._was = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)

    def __exit__(self, *exc: object) -> None:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(self._was)


def load(path: str | os.PathLike, series_uid: str | None = None) -> CtScan:
    """Read a CT scan: a DICOM directory, or a .mhd (+ .raw), .nii, .nii.gz or .nrrd file.

    Returns int16 HU [I, R, C] (DICOM rescale slope/intercept applied; out-of-field padding
    values such as -2048 or -3024 are kept as stored) with its geometry. For a directory holding
    several DICOM series, `series_uid` picks one. Raises ScanError naming the file and the problem.
    """
    import SimpleITK as sitk

    source = Path(path)
    if not source.exists():
        raise ScanError(f"{source}: no such file or directory")
    try:
        with _QuietITK():
            if source.is_dir():
                image, uid = _read_dicom_dir(source, series_uid)
            else:
                image, uid = _read_file(source, series_uid)
    except RuntimeError as exc:  # SimpleITK wraps every ITK exception in RuntimeError
        raise ScanError(f"{source}: cannot read: {_sitk_message(exc)}") from None
    except OSError as exc:
        raise ScanError(f"{source}: cannot read: {exc.strerror or exc}") from None

    if image.GetDimension() != 3:
        raise ScanError(
            f"{source}: expected a 3D volume, got a {image.GetDimension()}D image of size {list(image.GetSize())}"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanError(
            f"{source}: expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()} ({image.GetPixelIDTypeAsString()})"
        )
    try:
        geometry = Geometry.from_sitk(image)
    except GeometryError as exc:
        raise ScanError(f"{source}: {exc}") from None
    hu = _as_int16_hu(sitk.GetArrayFromImage(image), source)
    return CtScan(hu=hu, geometry=geometry, series_uid=uid, path=str(source))


def _as_int16_hu(values: np.ndarray, source: Path) -> np.ndarray:
    """int16 HU from whatever pixel type the reader produced; refuses values int16 cannot hold."""
    if values.dtype == np.int16:
        return values
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            raise ScanError(f"{source}: voxel values include NaN or infinity")
        values = np.rint(values)
    elif values.dtype.kind not in "iub":
        raise ScanError(f"{source}: unsupported pixel type {values.dtype}")
    if values.size:
        lo, hi = values.min(), values.max()
        if lo < -32768 or hi > 32767:
            raise ScanError(f"{source}: HU values {lo:g}..{hi:g} do not fit int16")
    return values.astype(np.int16)


def _read_file(source: Path, series_uid: str | None) -> tuple[Any, str]:
    import SimpleITK as sitk

    suffix = _format_suffix(source)
    if suffix is None:
        hint = " (for DICOM pass the directory of the series)" if source.suffix.lower() in (".dcm", ".ima") else ""
        raise ScanError(f"{source}: unknown extension, expected a DICOM directory or {', '.join(_SUFFIXES)}{hint}")
    uid = _stem(source)
    if series_uid is not None and series_uid != uid:
        raise ScanError(f"{source}: holds series {uid}, not the requested {series_uid}")
    if suffix == ".mhd":
        _check_mhd(source)
    elif suffix in (".nii", ".nii.gz"):
        _check_nifti(source, compressed=suffix == ".nii.gz")
    reader = sitk.ImageFileReader()
    reader.SetImageIO(_IMAGE_IO[suffix])
    reader.SetFileName(str(source))
    return reader.Execute(), uid


def _read_dicom_dir(source: Path, series_uid: str | None) -> tuple[Any, str]:
    import SimpleITK as sitk

    dicom = _dicom_files(source)
    reader = sitk.ImageSeriesReader()
    found = [str(u) for u in reader.GetGDCMSeriesIDs(str(source))] if dicom else []
    if not found:
        raise ScanError(f"no DICOM series in {source}")
    if series_uid is None:
        if len(found) > 1:
            raise ScanError(f"{source}: {len(found)} DICOM series, pick one with series_uid: {', '.join(found)}")
        chosen = found[0]
    elif series_uid in found:
        chosen = series_uid
    else:
        raise ScanError(f"{source}: no series {series_uid}; found: {', '.join(found)}")
    files = [f for f in reader.GetGDCMSeriesFileNames(str(source), chosen) if Path(f).resolve() in dicom]
    if not files:
        raise ScanError(f"{source}: series {chosen} has no readable files")
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    uid = (
        reader.GetMetaData(0, _SERIES_UID_TAG).strip().rstrip("\x00")
        if reader.HasMetaDataKey(0, _SERIES_UID_TAG)
        else ""
    )
    _check_slice_spacing(image, reader, source)
    return image, uid or chosen


def _dicom_files(source: Path) -> set[Path]:
    """The folder's complete DICOM Part-10 files (the only ones read); a cut one, or a *.dcm file
    that is not DICOM, raises ScanError (io/dicom_file.py, docs/design.md "Errors")."""
    found = set()
    for entry in sorted(source.iterdir()):
        if not entry.is_file():
            continue
        try:
            part10 = dicom_file.check(entry)
        except ScanError as exc:
            raise ScanError(f"{source}: {exc}") from None
        if part10:
            found.add(entry.resolve())
        elif entry.suffix.lower() == ".dcm":
            raise ScanError(f"{source}: {entry.name}: not a DICOM file (too short, or no 'DICM' at byte 128)")
    return found


def _check_slice_spacing(image: Any, reader: Any, source: Path) -> None:
    """Missing, duplicate or unevenly spaced slices make every index <-> mm conversion wrong.

    Projects each slice's ImagePositionPatient (0020|0032) on the slice normal and compares the
    steps with the spacing the reader chose; refuses a deviation over 10% of it.
    """
    n = image.GetDepth()
    if image.GetDimension() != 3 or n < 3:
        return
    positions = []
    for k in range(n):
        if not reader.HasMetaDataKey(k, "0020|0032"):
            return
        try:
            values = [float(v) for v in reader.GetMetaData(k, "0020|0032").strip().rstrip("\x00").split("\\")]
        except ValueError:
            return
        if len(values) != 3:
            return
        positions.append(values)
    normal = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    steps = np.diff(np.array(positions) @ normal)
    spacing_z = image.GetSpacing()[2]
    deviation = float(np.max(np.abs(np.abs(steps) - spacing_z)))
    if deviation > 0.1 * spacing_z:
        raise ScanError(
            f"{source}: slices are not evenly spaced (steps {np.min(np.abs(steps)):g}..{np.max(np.abs(steps)):g} mm,"
            f" spacing {spacing_z:g} mm; missing or duplicate slices?)"
        )


# -- header checks that ITK does not do (or does only by printing to stderr) --


def _check_nifti(path: Path, compressed: bool) -> None:
    """NIfTI-1/2 file complete (ITK silently reads a truncated one as partly zero)."""
    import gzip
    import zlib

    if compressed:
        try:
            with gzip.open(path, "rb") as f:
                header = f.read(540)
                size = len(header)
                while chunk := f.read(1 << 22):
                    size += len(chunk)
        except (EOFError, OSError, zlib.error) as exc:
            raise ScanError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    else:
        with open(path, "rb") as f:
            header = f.read(540)
        size = path.stat().st_size
    if len(header) < 348:
        raise ScanError(f"{path}: too short for a NIfTI header ({len(header)} bytes)")
    for order in ("<", ">"):
        sizeof_hdr = int(np.frombuffer(header[:4], dtype=f"{order}i4")[0])
        if sizeof_hdr in (348, 540):
            break
    else:
        raise ScanError(f"{path}: not a NIfTI file (bad header size field)")
    if sizeof_hdr == 348:
        dim = np.frombuffer(header[40:56], dtype=f"{order}i2").astype(np.int64)
        bitpix = int(np.frombuffer(header[72:74], dtype=f"{order}i2")[0])
        vox_offset = float(np.frombuffer(header[108:112], dtype=f"{order}f4")[0])
    else:
        if len(header) < 540:
            raise ScanError(f"{path}: too short for a NIfTI-2 header ({len(header)} bytes)")
        dim = np.frombuffer(header[16:80], dtype=f"{order}i8").astype(np.int64)
        bitpix = int(np.frombuffer(header[14:16], dtype=f"{order}i2")[0])
        vox_offset = float(np.frombuffer(header[168:176], dtype=f"{order}i8")[0])
    ndim = int(dim[0])
    if not 1 <= ndim <= 7 or np.any(dim[1 : ndim + 1] <= 0) or bitpix <= 0:
        raise ScanError(
            f"{path}: NIfTI header has invalid dimensions {dim[: ndim + 1].tolist() if 0 < ndim <= 7 else ndim}"
        )
    expected = int(vox_offset) + int(np.prod(dim[1 : ndim + 1])) * bitpix // 8
    if size < expected:
        raise ScanError(f"{path}: truncated NIfTI data ({size} bytes, expected {expected})")


def resampled(scan: CtScan, spacing_irc: Any) -> CtScan:
    """The scan on a grid of spacing_irc mm (slice, row, column), same origin and direction, by
    the C++ runtime's trilinear resampling (lunakit::resample): one implementation for both
    runtimes, so that the option resample_mm gives the same voxels in each."""
    from lunakit import _core

    g = scan.geometry
    try:
        hu, origin, spacing, direction = _core.resample(
            np.ascontiguousarray(scan.hu), g.origin_xyz, g.spacing_xyz, g.direction, spacing_irc
        )
    except _core.Error as exc:
        raise ScanError(f"{scan.path}: {exc}") from None
    return CtScan(hu=hu, geometry=Geometry(origin, spacing, direction), series_uid=scan.series_uid, path=scan.path)
