"""The C++ runtime in-process: `CppAnalyzer(bundle).analyze(scan)` gives what pipeline.analyze gives.

A thin typed layer over the pybind11 module `lunakit._core` (cpp/python/module.cpp): the scan's
int16 voxels cross as a numpy array read in place (no copy), findings come back as
`Finding` objects, and `lunakit._core.Error` becomes `CppEngineError` with the same one line.
The C++ side runs TorchScript bundles only here (docs/cpp.md, "Python bindings").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from lunakit.errors import LunakitError, first_line
from lunakit.io.ct import CtScan
from lunakit.pipeline.options import AnalysisOptions, Finding, Progress


class CppEngineError(LunakitError):
    """The C++ runtime refused a bundle, a scan or an array (lunakit._core.Error), or is missing."""


def core() -> Any:
    """The extension module `lunakit._core`; a build without it is refused in one line."""
    try:
        from lunakit import _core
    except ImportError as exc:
        raise CppEngineError(
            f"the C++ engine is not available: lunakit._core does not load ({first_line(exc)})"
        ) from None
    return _core


def _check_torchscript_bundle(bundle: Path) -> None:
    """Refuse ONNX and AOTInductor bundles by name; anything else wrong is Bundle::load's to report.
    The format names are spelled out: pipeline/ sits below bundle/ and does not import it."""
    try:
        manifest = json.loads((bundle / "manifest.json").read_text())
    except (OSError, ValueError):
        return
    if not isinstance(manifest, dict):
        return
    kind = None
    if manifest.get("format") == "lunakit-onnx-bundle":
        kind = "an ONNX bundle"
    elif manifest.get("model_format") == "aoti":
        kind = "an AOTInductor bundle"
    if kind:
        raise CppEngineError(
            f"{bundle}: {kind}; the C++ engine runs TorchScript bundles (lunakit export --format torchscript)"
        )


class CppAnalyzer:
    """A bundle loaded and checked by the C++ runtime (lunakit::Bundle::load + lunakit::Analyzer)."""

    def __init__(self, bundle: str | os.PathLike, device: str = "cpu", threads: int = 0) -> None:
        self.bundle = Path(bundle)
        _check_torchscript_bundle(self.bundle)
        _core = core()
        try:
            self._analyzer = _core.Analyzer(str(self.bundle), device=str(device), threads=int(threads))
        except _core.Error as exc:
            raise CppEngineError(str(exc)) from None
        self.options = AnalysisOptions.from_dict(json.loads(self._analyzer.options))  # the C++ options' JSON
        self.checksums: dict[str, str] = dict(self._analyzer.checksums)
        self.device: str = self._analyzer.device

    def analyze(self, scan: CtScan, progress: Optional[Progress] = None) -> list[Finding]:
        """Findings of `scan`, sorted by p_nodule (highest first; ties in the components' raster
        order), as pipeline.analyze sorts them. scan.hu must be a C-contiguous int16 or float32
        [I, R, C] array (what io.ct.load gives); it is read in place and must not change meanwhile."""
        _core = core()
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
