"""lunakit's C++ kernels as typed Python functions: crops, erosion, 3D grouping, cores.

Each function calls one op of ``torch.ops.lunakit`` (declared in cpp/src/ops/registration.cpp),
which runs the CPU or CUDA kernel of the tensors' device, the same code ``luna_infer`` runs.
The ops also work inside ``torch.jit.script`` (call ``torch.ops.lunakit.*`` there) and under
FakeTensor/``torch.compile`` through the fake kernels registered here.

Contracts (docs/design.md, "Crops" and "Grouping"): volumes are [I, R, C]; a crop of ``size``
starts at ``round(center_irc - size / 2)`` (half to even); labels are int32, 0 = background,
components 1..count in the raster order of their first voxel, as ``scipy.ndimage.label``.
"""

from __future__ import annotations

import functools
from typing import Callable, Literal, Optional, Sequence, Tuple, TypeVar

import torch

import lunakit._core  # noqa: F401  (loads the op library: registers torch.ops.lunakit.*)
from lunakit.errors import LunakitError, first_line
from lunakit.models.classifier import CROP_SIZE_IRC

__all__ = [
    "OpInputError",
    "extract_crops",
    "binary_erode",
    "label_components",
    "component_stats",
    "component_cores",
    "lung_field",
    "near_mask",
    "DEFAULT_HU_CLIP",
]

DEFAULT_HU_CLIP: Tuple[float, float] = (-1000.0, 1000.0)

CropMode = Literal["shift", "pad"]
_F = TypeVar("_F", bound=Callable)


class OpInputError(LunakitError, ValueError, TypeError):
    """A kernel refused its input (wrong rank, dtype, device, NaN center, ...).

    Also a ValueError and a TypeError, which is what the raw ``torch.ops.lunakit`` call raises.
    """


def _input_errors(fn: _F) -> _F:
    """Turn the kernels' input checks (ValueError / TypeError from TORCH_CHECK_VALUE/TYPE) into OpInputError."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OpInputError:
            raise
        except (ValueError, TypeError) as e:
            raise OpInputError(first_line(e)) from e

    return wrapper  # type: ignore[return-value]


@_input_errors
def extract_crops(
    volume: torch.Tensor,
    centers_irc: torch.Tensor,
    size: Sequence[int] = CROP_SIZE_IRC,
    mode: CropMode = "shift",
    fill: float = -1000.0,
    clip: Optional[Tuple[float, float]] = DEFAULT_HU_CLIP,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Cut a crop around each center, clipped to an HU window, as float32 [N, 1, *size].

    volume: int16 or float32 [I, R, C]. centers_irc: floating [N, 3] (voxel coordinates, may be
    fractional; N may be 0), on the volume's device. Each crop starts at
    ``round(center_irc - size / 2)`` per axis, half to even. ``mode="shift"`` (the book's
    behavior, which its trained models expect) moves a crop that would leave the volume back
    inside it, and refuses a volume smaller than the crop; ``mode="pad"`` keeps the crop
    centered and writes ``fill`` (not clipped) where it leaves the volume. ``clip=None``
    keeps values unclipped. ``out``: a contiguous float32 [N, 1, *size] buffer on the volume's
    device to write into and return.
    """
    lo, hi = (float("-inf"), float("inf")) if clip is None else (float(clip[0]), float(clip[1]))
    size = [int(s) for s in size]
    if out is None:
        return torch.ops.lunakit.extract_crops(volume, centers_irc, size, mode, float(fill), lo, hi)
    torch.ops.lunakit.extract_crops_into(volume, centers_irc, size, mode, float(fill), lo, hi, out=out)
    return out


@_input_errors
def binary_erode(mask: torch.Tensor) -> torch.Tensor:
    """One binary erosion of a bool [I, R, C] mask by the 3D 6-connected cross.

    Voxels outside the volume count as background, so the outer shell is always eroded:
    the same as ``scipy.ndimage.binary_erosion(mask, iterations=1)``.
    """
    return torch.ops.lunakit.binary_erode(mask)


@_input_errors
def label_components(mask: torch.Tensor, connectivity: int = 6) -> Tuple[torch.Tensor, int]:
    """Connected components of a bool [I, R, C] mask: (labels int32 [I, R, C], count).

    connectivity 6 (faces), 18 (+ edges) or 26 (+ corners), as scipy's
    ``generate_binary_structure(3, 1 | 2 | 3)``. Labels are 1..count in the raster order
    (I, then R, then C) of each component's first voxel, exactly scipy.ndimage.label's
    numbering, on CPU and CUDA alike.
    """
    labels, count = torch.ops.lunakit.label_components(mask, int(connectivity))
    return labels, count  # a plain int; a SymInt under fake tensors (torch.compile)


@_input_errors
def component_stats(
    labels: torch.Tensor, count: int, weights: Optional[torch.Tensor] = None
) -> dict[str, torch.Tensor]:
    """Statistics of components 1..count of int32 [I, R, C] labels; row k - 1 is label k.

    Returns a dict: ``voxel_count`` int64 [K]; ``bbox_min``, ``bbox_max`` int64 [K, 3] (irc,
    both inclusive); ``center_irc`` float64 [K, 3], the center of mass weighted by ``weights``
    (any real dtype, labels' shape, e.g. ``hu.clamp(-1000, 1000) + 1001``) or by voxel without
    them; ``weight_sum`` float64 [K] (the voxel count without weights). A label that never
    occurs gets voxel_count 0, bbox -1 and a NaN center. Labels outside 0..count are an error.
    """
    voxel_count, bbox_min, bbox_max, center_irc, weight_sum = torch.ops.lunakit.component_stats(
        labels, int(count), weights
    )
    return {
        "voxel_count": voxel_count,
        "bbox_min": bbox_min,
        "bbox_max": bbox_max,
        "center_irc": center_irc,
        "weight_sum": weight_sum,
    }


@_input_errors
def component_cores(labels: torch.Tensor, count: int, spacing_irc: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Each component's core: its voxels of greatest depth, as a bool mask of labels' shape.

    Without spacing_irc a voxel's depth is in-plane: its taxicab distance to the nearest
    background pixel of its slice (outside the slice is background), one more than the number
    of 2D erosions by the 4-connected cross it survives. With spacing_irc (slice, row, column
    mm) it is 3D: the taxicab distance in mm to the nearest background voxel (outside the array
    is background); depths within 1e-6 mm of a component's greatest tie. Where a component is
    thickest, e.g. the nodule of a nodule the segmenter merged with a vessel, whose center of
    mass lies off the nodule. Labels outside 0..count are an error.
    """
    spacing = None if spacing_irc is None else [float(v) for v in spacing_irc]
    return torch.ops.lunakit.component_cores(labels, int(count), spacing)


@_input_errors
def lung_field(hu: torch.Tensor) -> torch.Tensor:
    """The lung field of a CT (bool, hu's shape [I, R, C]): air below -400 HU in 6-connected
    components that reach no slice's edge, hold at least 5% of the largest air component and
    average above -930 HU (so not bowel gas or the trachea), with each slice's holes (vessels,
    nodules) filled. Where the pipeline looks for nodules (option lung_margin_mm)."""
    return torch.ops.lunakit.lung_field(hu)


@_input_errors
def near_mask(
    mask: torch.Tensor, centers_irc: torch.Tensor, spacing_irc: Sequence[float], margin_mm: float
) -> torch.Tensor:
    """For each center (float [K, 3], irc): whether a voxel of mask (bool [I, R, C]) lies within
    margin_mm of it, Euclidean at spacing_irc (slice, row, column mm). bool [K]."""
    return torch.ops.lunakit.near_mask(mask, centers_irc, [float(v) for v in spacing_irc], float(margin_mm))


# ---- fake (meta) kernels: output shapes and dtypes without running the kernels -------------


def _register_fakes() -> None:
    def crops_shape(centers_irc: torch.Tensor, size: Sequence[int]) -> list:
        return [centers_irc.shape[0], 1, *size]

    @torch.library.register_fake("lunakit::extract_crops")
    def _(volume, centers_irc, size=CROP_SIZE_IRC, mode="shift", fill=-1000.0, clip_min=-1000.0, clip_max=1000.0):
        return volume.new_empty(crops_shape(centers_irc, size), dtype=torch.float32)

    @torch.library.register_fake("lunakit::extract_crops_into")
    def _(
        volume,
        centers_irc,
        size=CROP_SIZE_IRC,
        crop_mode="shift",
        fill=-1000.0,
        clip_min=-1000.0,
        clip_max=1000.0,
        *,
        out,
    ):
        return None

    @torch.library.register_fake("lunakit::binary_erode")
    def _(mask):
        return torch.empty_like(mask, dtype=torch.bool)

    @torch.library.register_fake("lunakit::label_components")
    def _(mask, connectivity=6):
        # The number of components depends on the data: an unbacked symbolic int.
        count = torch.library.get_ctx().new_dynamic_size()
        return torch.empty_like(mask, dtype=torch.int32), count

    @torch.library.register_fake("lunakit::component_stats")
    def _(labels, count, weights=None):
        i64 = dict(dtype=torch.int64, device=labels.device)
        f64 = dict(dtype=torch.float64, device=labels.device)
        return (
            torch.empty((count,), **i64),
            torch.empty((count, 3), **i64),
            torch.empty((count, 3), **i64),
            torch.empty((count, 3), **f64),
            torch.empty((count,), **f64),
        )

    @torch.library.register_fake("lunakit::component_cores")
    def _(labels, count, spacing=None):
        return torch.empty_like(labels, dtype=torch.bool)

    @torch.library.register_fake("lunakit::lung_field")
    def _(hu):
        return torch.empty_like(hu, dtype=torch.bool)

    @torch.library.register_fake("lunakit::near_mask")
    def _(mask, centers_irc, spacing, margin_mm):
        return torch.empty((centers_irc.shape[0],), dtype=torch.bool, device=centers_irc.device)


_register_fakes()
