"""Where the voxels of a volume sit in patient space.

Every conversion between voxel indices and millimetres goes through `Geometry`, so the
convention (docs/geometry.md) lives in one place:

    cri = (c, r, i);  xyz = origin_xyz + direction @ (spacing_xyz * cri)

where column k of `direction` is the patient direction of index axis k (x = column,
y = row, z = slice), as ITK stores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from lunakit.errors import LunakitError


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
