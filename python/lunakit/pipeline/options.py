"""The pipeline's numbers and results: AnalysisOptions, Finding, Models (docs/design.md).

Plain data. The options' defaults and checks are the C++ runtime's (lunakit::PipelineOptions,
read through lunakit._core): one rule for both runtimes, so a bundle one of them accepts, the
other accepts too.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch

from lunakit import _core
from lunakit.errors import LunakitError


class AnalysisError(LunakitError):
    """A scan or option the pipeline cannot analyze."""


def checked_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` completed with the defaults and checked by lunakit::PipelineOptions -> every field,
    numbers of their field's type. Raises AnalysisError with the C++ one-line message."""
    try:
        return json.loads(_core.check_options(values))
    except _core.Error as exc:
        raise AnalysisError(str(exc)) from None


_DEFAULTS = checked_options({})


@dataclass(frozen=True)
class AnalysisOptions:
    """Every number of the pipeline (docs/design.md, "From a scan to findings"), in one place.
    The defaults and the checks come from C++ (checked_options)."""

    # resample the scan to this spacing (mm; slice, row, column) first; None: the book's voxels
    resample_mm: Optional[tuple[float, float, float]] = _DEFAULTS["resample_mm"]
    hu_min: float = _DEFAULTS["hu_min"]
    hu_max: float = _DEFAULTS["hu_max"]
    context_slices: int = _DEFAULTS["context_slices"]  # segmentation input: slices i-3..i+3
    seg_threshold: float = _DEFAULTS["seg_threshold"]
    erosion_iterations: int = _DEFAULTS["erosion_iterations"]
    connectivity: int = _DEFAULTS["connectivity"]
    min_diameter_mm: float = _DEFAULTS["min_diameter_mm"]  # smaller equal-volume diameters are dropped
    # a candidate's center: its component's "mass", or its "core" (in-plane) or "core3d" (3D depth)
    center_mode: str = _DEFAULTS["center_mode"]
    # drop candidates farther than this (mm) from the lung field; None: keep all, the book's way
    lung_margin_mm: Optional[float] = _DEFAULTS["lung_margin_mm"]
    crop_size: tuple[int, int, int] = tuple(_DEFAULTS["crop_size"])  # what LunaModel takes (I, R, C)
    crop_mode: str = _DEFAULTS["crop_mode"]
    nodule_threshold: float = _DEFAULTS["nodule_threshold"]
    malignancy_on: str = _DEFAULTS["malignancy_on"]  # "all" candidates, or "nodules" above nodule_threshold
    cls_flips: bool = _DEFAULTS["cls_flips"]  # classifiers averaged over the crop's 8 mirror images
    seg_batch_size: int = _DEFAULTS["seg_batch_size"]
    cls_batch_size: int = _DEFAULTS["cls_batch_size"]
    precision: str = _DEFAULTS["precision"]  # "fp32" (exact), "bf16" (fast, docs/pipeline.md) or "auto"

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in checked_options(values).items():
            object.__setattr__(self, name, tuple(value) if isinstance(value, list) else value)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["crop_size"] = list(self.crop_size)
        d["resample_mm"] = None if self.resample_mm is None else list(self.resample_mm)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AnalysisOptions":
        """Options from a manifest's or findings.json's "options": unknown fields and values of the
        wrong type are refused (AnalysisError), missing ones take the defaults."""
        if not isinstance(d, Mapping):
            raise AnalysisError("options: must be a JSON object")
        return cls(**checked_options(d))


@dataclass
class Finding:
    """One candidate: where it is, how big, and what the classifiers think of it."""

    center_xyz: tuple[float, float, float]
    center_irc: tuple[float, float, float]
    voxel_count: int
    bbox_irc: tuple[tuple[int, int, int], tuple[int, int, int]]  # (min, max), inclusive
    diameter_mm: float
    p_nodule: float
    p_malignant: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "center_xyz": [float(v) for v in self.center_xyz],
            "center_irc": [float(v) for v in self.center_irc],
            "voxel_count": int(self.voxel_count),
            "bbox_irc": [[int(v) for v in self.bbox_irc[0]], [int(v) for v in self.bbox_irc[1]]],
            "diameter_mm": float(self.diameter_mm),
            "p_nodule": float(self.p_nodule),
            "p_malignant": None if self.p_malignant is None else float(self.p_malignant),
        }


@dataclass
class Models:
    """The networks of the pipeline: eager modules or TorchScript, already on their device."""

    seg: torch.nn.Module
    cls: Optional[torch.nn.Module]  # None: candidates only, unscored (mine-negatives with a segmenter alone)
    mal: Optional[torch.nn.Module] = None
    checksums: dict[str, str] = field(default_factory=dict)
    compiled: bool = False  # AOTInductor or ONNX models: they run in fp32, autocast does not reach them


Progress = Callable[[str, int, int], None]  # (stage, done, total)
