"""The pipeline's numbers and results: AnalysisOptions, Finding, Models (docs/design.md).

Plain data only: no lunakit op is imported here, so the bundle manifest, the findings writers and
the serving layer can use these types without loading the kernels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from lunakit.errors import LunakitError
from lunakit.models.classifier import CROP_SIZE_IRC


class AnalysisError(LunakitError):
    """A scan or option the pipeline cannot analyze."""


@dataclass(frozen=True)
class AnalysisOptions:
    """Every number of the pipeline (docs/design.md, "From a scan to findings"), in one place."""

    hu_min: float = -1000.0
    hu_max: float = 1000.0
    context_slices: int = 3  # segmentation input: slices i-3..i+3
    seg_threshold: float = 0.5
    erosion_iterations: int = 1
    connectivity: int = 6
    min_diameter_mm: float = 0.0  # components of a smaller equal-volume diameter are dropped
    center_mode: str = "mass"  # a candidate's center: its component's center of "mass", or of its "core"
    crop_size: tuple[int, int, int] = CROP_SIZE_IRC  # what LunaModel takes
    crop_mode: str = "shift"
    nodule_threshold: float = 0.5
    malignancy_on: str = "all"  # "all" candidates, or only "nodules" above nodule_threshold
    seg_batch_size: int = 8
    cls_batch_size: int = 64

    def __post_init__(self) -> None:
        # The messages are the C++ PipelineOptions::validate's, word for word (numbers as %g):
        # tests/bundle/test_contract.py holds the two runtimes to the same refusals.
        if not self.hu_min < self.hu_max:
            raise AnalysisError(f"options: hu_min {self.hu_min:g} must be below hu_max {self.hu_max:g}")
        if self.context_slices < 0:
            raise AnalysisError(f"options: context_slices must be >= 0, got {self.context_slices}")
        for name in ("seg_threshold", "nodule_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise AnalysisError(f"options: {name} must lie in [0, 1], got {value:g}")
        if self.erosion_iterations < 0:
            raise AnalysisError(f"options: erosion_iterations must be >= 0, got {self.erosion_iterations}")
        if self.connectivity not in (6, 18, 26):
            raise AnalysisError(f"options: connectivity must be 6, 18 or 26, got {self.connectivity}")
        if not 0.0 <= self.min_diameter_mm < float("inf"):
            raise AnalysisError(f"options: min_diameter_mm must be a finite number >= 0, got {self.min_diameter_mm:g}")
        if len(self.crop_size) != 3 or min(self.crop_size) < 1:
            raise AnalysisError("options: crop_size must be 3 positive sizes")
        object.__setattr__(self, "crop_size", tuple(int(s) for s in self.crop_size))
        if self.crop_mode not in ("shift", "pad"):
            raise AnalysisError(f"options: crop_mode must be 'shift' or 'pad', got {self.crop_mode!r}")
        if self.center_mode not in ("mass", "core"):
            raise AnalysisError(f"options: center_mode must be 'mass' or 'core', got {self.center_mode!r}")
        if self.malignancy_on not in ("all", "nodules"):
            raise AnalysisError(f"options: malignancy_on must be 'all' or 'nodules', got {self.malignancy_on!r}")
        if self.seg_batch_size < 1 or self.cls_batch_size < 1:
            raise AnalysisError("options: batch sizes must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["crop_size"] = list(self.crop_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AnalysisOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise AnalysisError(f"options: unknown field(s) {', '.join(unknown)}")
        values = dict(d)
        if "crop_size" in values:
            values["crop_size"] = tuple(values["crop_size"])
        return cls(**values)


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
    cls: torch.nn.Module
    mal: Optional[torch.nn.Module] = None
    checksums: dict[str, str] = field(default_factory=dict)


Progress = Callable[[str, int, int], None]  # (stage, done, total)
