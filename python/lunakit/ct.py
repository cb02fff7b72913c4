"""CT input and geometry: read a scan into int16 HU [I, R, C] with its patient-space geometry.

Every conversion between voxel indices and millimetres goes through `Geometry`, so the
convention (docs/geometry.md) lives in one place:

    cri = (c, r, i);  xyz = origin_xyz + direction @ (spacing_xyz * cri)

where column k of `direction` is the patient direction of index axis k (x = column,
y = row, z = slice), as ITK stores it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from lunakit.errors import LunakitError, ScanError


class GeometryError(LunakitError):
    """A geometry is not usable (non-finite numbers, spacing <= 0, singular direction, wrong shape)."""


def _vector3(value: Any, name: str) -> np.ndarray:
    arr = np.array(value, dtype=np.float64).reshape(-1)
    if arr.shape != (3,):
        raise GeometryError(f"{name} must have 3 values, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise GeometryError(f"{name} must be finite, got {arr.tolist()}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Geometry:
    """Where the voxels of a volume sit in patient space (millimetres).

    origin_xyz: position of voxel (i, r, c) = (0, 0, 0).
    spacing_xyz: voxel size along the column, row and slice axes.
    direction: 3x3, column k = unit patient direction of index axis k (k = column, row, slice).
    """

    origin_xyz: np.ndarray
    spacing_xyz: np.ndarray
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    _inverse: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        origin = _vector3(self.origin_xyz, "origin_xyz")
        spacing = _vector3(self.spacing_xyz, "spacing_xyz")
        if not np.all(spacing > 0):
            raise GeometryError(f"spacing_xyz must be > 0, got {spacing.tolist()}")
        direction = np.array(self.direction, dtype=np.float64)
        if direction.size == 9:
            direction = direction.reshape(3, 3)
        if direction.shape != (3, 3):
            raise GeometryError(f"direction must be 3x3, got shape {tuple(direction.shape)}")
        if not np.all(np.isfinite(direction)):
            raise GeometryError(f"direction must be finite, got {direction.tolist()}")
        # Singular or nearly so: the index <-> mm mapping could not be inverted reliably.
        cond = np.linalg.cond(direction)
        if not np.isfinite(cond) or cond > 1e12:
            raise GeometryError(f"direction matrix is singular (cannot invert): {direction.tolist()}")
        direction.setflags(write=False)
        inverse = np.linalg.inv(direction)
        inverse.setflags(write=False)
        object.__setattr__(self, "origin_xyz", origin)
        object.__setattr__(self, "spacing_xyz", spacing)
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "_inverse", inverse)

    # -- equality / hashing on values (numpy arrays do not compare as dataclass fields) --
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return (
            np.array_equal(self.origin_xyz, other.origin_xyz)
            and np.array_equal(self.spacing_xyz, other.spacing_xyz)
            and np.array_equal(self.direction, other.direction)
        )

    def __hash__(self) -> int:
        return hash((self.origin_xyz.tobytes(), self.spacing_xyz.tobytes(), self.direction.tobytes()))

    def allclose(self, other: "Geometry", atol: float = 1e-9) -> bool:
        """Same geometry up to float noise (e.g. after a float32 file-format round trip)."""
        return (
            np.allclose(self.origin_xyz, other.origin_xyz, rtol=0, atol=atol)
            and np.allclose(self.spacing_xyz, other.spacing_xyz, rtol=0, atol=atol)
            and np.allclose(self.direction, other.direction, rtol=0, atol=atol)
        )

    # -- construction --
    @classmethod
    def identity(cls, spacing_xyz: Iterable[float] = (1.0, 1.0, 1.0)) -> "Geometry":
        """Origin 0, axis-aligned, the given spacing."""
        return cls(np.zeros(3), np.array(tuple(spacing_xyz), dtype=np.float64), np.eye(3))

    def to_dict(self) -> dict[str, list]:
        """JSON-able: origin_xyz, spacing_xyz as lists, direction as 3 rows."""
        return {
            "origin_xyz": [float(v) for v in self.origin_xyz],
            "spacing_xyz": [float(v) for v in self.spacing_xyz],
            "direction": [[float(v) for v in row] for row in self.direction],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Geometry":
        """Inverse of to_dict (direction as 3 rows or row-major flat 9)."""
        try:
            return cls(d["origin_xyz"], d["spacing_xyz"], d["direction"])
        except KeyError as exc:
            raise GeometryError(f"geometry dict lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise GeometryError(f"geometry dict is malformed: {exc}") from None

    @classmethod
    def from_sitk(cls, image: Any) -> "Geometry":
        """Geometry of a 3D SimpleITK image (GetDirection is row-major flat 9)."""
        if image.GetDimension() != 3:
            raise GeometryError(f"image must be 3D, got {image.GetDimension()}D")
        return cls(
            np.array(image.GetOrigin(), dtype=np.float64),
            np.array(image.GetSpacing(), dtype=np.float64),
            np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3),
        )

    def apply_to_sitk(self, image: Any) -> Any:
        """Set origin, spacing and direction on a SimpleITK image; returns the image."""
        image.SetOrigin(tuple(float(v) for v in self.origin_xyz))
        image.SetSpacing(tuple(float(v) for v in self.spacing_xyz))
        image.SetDirection(tuple(float(v) for v in self.direction.reshape(-1)))
        return image

    # -- coordinate conversion --
    @staticmethod
    def _points(points: Any, name: str) -> tuple[np.ndarray, bool]:
        arr = np.asarray(points, dtype=np.float64)
        if arr.shape == (3,):
            return arr[None, :], True
        if arr.ndim == 2 and arr.shape[1] == 3:
            return arr, False
        raise GeometryError(f"{name} must have shape (3,) or (N, 3), got {tuple(arr.shape)}")

    def irc_to_xyz(self, points_irc: Any) -> np.ndarray:
        """Voxel coordinates (i, r, c), float allowed, -> patient mm (x, y, z). Shape (3,) or (N, 3)."""
        irc, single = self._points(points_irc, "points_irc")
        cri = irc[:, ::-1]
        xyz = self.origin_xyz + (cri * self.spacing_xyz) @ self.direction.T
        return xyz[0] if single else xyz

    def xyz_to_irc(self, points_xyz: Any) -> np.ndarray:
        """Patient mm (x, y, z) -> float voxel coordinates (i, r, c). Shape (3,) or (N, 3)."""
        xyz, single = self._points(points_xyz, "points_xyz")
        cri = ((xyz - self.origin_xyz) @ self._inverse.T) / self.spacing_xyz
        irc = np.ascontiguousarray(cri[:, ::-1])
        return irc[0] if single else irc

    @staticmethod
    def round_irc(points_irc: Any) -> np.ndarray:
        """Float voxel coordinates -> int64 indices, round half to even (np.rint)."""
        arr = np.asarray(points_irc, dtype=np.float64)
        if not (arr.shape == (3,) or (arr.ndim == 2 and arr.shape[1] == 3)):
            raise GeometryError(f"points_irc must have shape (3,) or (N, 3), got {tuple(arr.shape)}")
        if not np.all(np.isfinite(arr)):
            raise GeometryError("points_irc must be finite to round to voxel indices")
        return np.rint(arr).astype(np.int64)


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
        raise ScanError(f"{target}: geometry must be a lunakit.ct.Geometry")
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
            raw_name = _mhd_data_file(tmp_file)
            tmp_raw = tmp_dir / raw_name
            if not tmp_raw.is_file():
                raise ScanError(f"{target}: SimpleITK wrote no data file {raw_name}")
            os.replace(tmp_raw, parent / raw_name)
        os.replace(tmp_file, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


def _mhd_data_file(header: Path) -> str:
    for line in header.read_text(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ElementDataFile":
            return value.strip()
    raise ScanError(f"{header}: no ElementDataFile in header")


def _sitk_message(exc: BaseException) -> str:
    """The first meaningful line of a SimpleITK/ITK exception (they span many lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        low = ln.lower()
        if low.startswith("description:"):
            return ln.split(":", 1)[1].strip()
    for ln in lines:
        if "exception" in ln.lower() and ln.rstrip().endswith(":"):
            continue
        if ln.startswith("/") or ln.lower().startswith("itk::"):
            continue
        return ln
    return lines[0] if lines else type(exc).__name__
