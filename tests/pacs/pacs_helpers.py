"""Helpers of the PACS tests: a free port, and independent readers of what lunakit writes: the SR's findings through pydicom alone, the
SEG's voxels through pydicom alone, and dciodvfy (dicom3tools) for the standard's rules."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest


def free_port() -> int:
    """A loopback TCP port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sr_findings(sr) -> list[dict]:
    """[{center_xyz, diameter_mm, p_nodule, p_malignant}] per TID 1411 group, in the report's order."""
    [imaging] = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements"]
    out = []
    for group in imaging.ContentSequence:
        assert group.ConceptNameCodeSequence[0].CodeMeaning == "Measurement Group"
        record = {"center_xyz": None, "diameter_mm": None, "p_nodule": None, "p_malignant": None}
        for item in group.ContentSequence:
            code = item.ConceptNameCodeSequence[0]
            if item.ValueType == "SCOORD3D":
                assert item.GraphicType == "POINT" and code.CodeValue == "121231"  # Volume Surface
                record["center_xyz"] = [float(v) for v in item.GraphicData]
                record["frame_of_reference"] = item.ReferencedFrameOfReferenceUID
            elif item.ValueType == "NUM":
                value = float(item.MeasuredValueSequence[0].NumericValue)
                unit = item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue
                key = {("SCT", "81827009"): "diameter_mm"}.get((code.CodingSchemeDesignator, code.CodeValue))
                if key == "diameter_mm":
                    assert unit == "mm"
                else:
                    assert code.CodingSchemeDesignator == "99LUNAKIT" and unit == "1"
                    key = code.CodeValue
                record[key] = value
        out.append(record)
    return out


def assert_sr_matches(sr, findings: list[dict], frame_of_reference: str) -> None:
    """The SR's findings equal findings.json's: same order; DS values carry 16 characters and
    SCOORD3D points are float32, hence the tolerances."""
    got = sr_findings(sr)
    assert len(got) == len(findings) > 0
    for g, f in zip(got, findings):
        assert g["frame_of_reference"] == frame_of_reference
        np.testing.assert_allclose(g["center_xyz"], f["center_xyz"], rtol=0, atol=1e-4)
        for key in ("diameter_mm", "p_nodule", "p_malignant"):
            if f[key] is None:
                assert g[key] is None, key
            else:
                assert np.isclose(g[key], f[key], rtol=1e-10, atol=1e-15), (key, g[key], f[key])


def seg_voxels(seg, sources_by_uid: dict[str, int], shape: tuple[int, int, int]) -> np.ndarray:
    """The SEG as a bool volume [I, R, C]; frame -> slice through each frame's source image."""
    volume = np.zeros(shape, dtype=bool)
    frames = seg.pixel_array.reshape(-1, shape[1], shape[2])
    for frame, groups in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        source = groups.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        volume[sources_by_uid[source]] |= frame.astype(bool)
    return volume


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's error lines for the file (none for a valid object); its warnings are allowed."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.skip("dciodvfy is not installed (scripts/setup.sh: dicom3tools)")
    result = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
