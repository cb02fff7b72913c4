"""The C++ runtime in-process: `CppAnalyzer(bundle).analyze(scan)` gives what pipeline.analyze gives.

A thin typed layer over the pybind11 module `lunakit._core` (cpp/python/module.cpp): the scan's
int16 voxels cross as a numpy array read in place (no copy), findings come back as
`Finding` objects, and `lunakit._core.Error` becomes `CppEngineError` with the same one line.
It runs every bundle lunakit::Bundle::load reads: TorchScript and AOTInductor (docs/cpp.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from lunakit import _core
from lunakit.errors import LunakitError
from lunakit.io.ct import CtScan
from lunakit.pipeline.options import AnalysisOptions, Finding, Progress


class CppEngineError(LunakitError):
    """The C++ runtime refused a bundle, a scan or an array (lunakit._core.Error), or is missing."""


class CppAnalyzer:
    """A bundle loaded and checked by the C++ runtime (lunakit::Bundle::load + lunakit::Analyzer)."""

    def __init__(
        self, bundle: str | os.PathLike, device: str = "cpu", threads: int = 0, precision: Optional[str] = None
    ) -> None:
        """precision: "fp32", "bf16" or "auto" (None: the bundle's); self.options.precision is the
        one in effect ("fp32" or "bf16")."""
        self.bundle = Path(bundle)
        try:
            self._analyzer = _core.Analyzer(
                str(self.bundle), device=str(device), threads=int(threads), precision=precision or ""
            )
        except _core.Error as exc:
            raise CppEngineError(str(exc)) from None
        self.options = AnalysisOptions.from_dict(json.loads(self._analyzer.options))  # the C++ options' JSON
        self.checksums: dict[str, str] = dict(self._analyzer.checksums)
        self.device: str = self._analyzer.device

    def analyze(self, scan: CtScan, progress: Optional[Progress] = None) -> list[Finding]:
        """Findings of `scan`, sorted by p_nodule (highest first; ties in the components' raster
        order), as pipeline.analyze sorts them. scan.hu must be a C-contiguous int16 or float32
        [I, R, C] array (what io.ct.load gives); it is read in place and must not change meanwhile."""
        g = scan.geometry
        try:
            records = self._analyzer.analyze(scan.hu, g.origin_xyz, g.spacing_xyz, g.direction, progress)
        except _core.Error as exc:
            raise CppEngineError(f"{scan.path}: {exc}") from None
        findings = [
            Finding(
                center_xyz=tuple(r["center_xyz"]),
                center_irc=tuple(r["center_irc"]),
                voxel_count=r["voxel_count"],
                bbox_irc=(tuple(r["bbox_irc"][0]), tuple(r["bbox_irc"][1])),
                diameter_mm=r["diameter_mm"],
                p_nodule=r["p_nodule"],
                p_malignant=r["p_malignant"],
            )
            for r in records
        ]
        findings.sort(key=lambda f: -f.p_nodule)  # stable: C++ already sorts so; kept as the contract
        return findings
