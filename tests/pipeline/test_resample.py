"""The resample_mm option (lunakit::resample; docs/pipeline.md, "Resampling"): the voxels against
scipy's trilinear interpolation, the grid against hand-computed sizes and patient positions, and the
pipeline with the option in both runtimes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from lunakit.bundle import load_bundle
from lunakit.errors import LunakitError
from lunakit.io import ct
from lunakit.io.ct import CtScan
from lunakit.io.findings import findings_document
from lunakit.io.geometry import Geometry
from lunakit.pipeline.analyze import analyze, analyze_with_mask
from lunakit.pipeline.cpp_engine import CppAnalyzer
from lunakit.pipeline.options import AnalysisError, AnalysisOptions

from helpers import assert_same_findings

OBLIQUE = np.array([[0.0, 0.6, -0.8], [1.0, 0.0, 0.0], [0.0, 0.8, 0.6]])  # columns: axes c, r, i


def scan_of(hu: np.ndarray, spacing_xyz, direction=np.eye(3)) -> CtScan:
    return CtScan(hu=hu, geometry=Geometry((-12.5, 40.0, 7.25), spacing_xyz, direction), series_uid="1.2.3", path="t")


@pytest.mark.parametrize(
    "spacing_xyz, target_irc",
    [((0.7, 0.7, 2.5), (1.0, 1.0, 1.0)), ((0.6, 0.9, 1.0), (1.5, 0.45, 0.8)), ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0))],
)
def test_voxels_are_scipys_trilinear_interpolation(spacing_xyz, target_irc):
    rng = np.random.default_rng(5)
    hu = rng.integers(-1024, 2000, size=(17, 23, 29)).astype(np.int16)
    scan = scan_of(hu, spacing_xyz, OBLIQUE)
    out = ct.resampled(scan, target_irc)
    source_irc = np.array(spacing_xyz[::-1])
    # hand rule: floor((n - 1) * s / s') + 1 samples per axis
    expected_shape = tuple(
        int(np.floor((n - 1) * s / t + 1e-6)) + 1 for n, s, t in zip(hu.shape, source_irc, target_irc)
    )
    assert out.hu.shape == expected_shape and out.hu.dtype == np.int16
    grid = np.meshgrid(
        *[np.arange(n) * t / s for n, t, s in zip(expected_shape, target_irc, source_irc)], indexing="ij"
    )
    reference = ndimage.map_coordinates(hu.astype(np.float64), grid, order=1, mode="nearest")
    diff = np.abs(out.hu.astype(np.int64) - np.rint(reference).astype(np.int64))
    # equal, but where the value lies half-way between integers (a last-bit difference decides)
    assert diff.max() <= 1
    np.testing.assert_allclose(np.abs(reference - np.floor(reference))[diff == 1], 0.5, atol=1e-9)
    if target_irc == tuple(source_irc):
        np.testing.assert_array_equal(out.hu, hu)  # the scan's own spacing: the same voxels
    # the same origin and direction: resampled voxel j sits where source index j * s' / s sits
    np.testing.assert_allclose(out.geometry.spacing_xyz, target_irc[::-1])
    j = np.array([[3.0, 5.0, 7.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(
        out.geometry.irc_to_xyz(j), scan.geometry.irc_to_xyz(j * np.array(target_irc) / source_irc), atol=1e-9
    )


def test_absurd_spacings_are_refused_in_one_line():
    scan = scan_of(np.zeros((40, 512, 512), np.int16), (0.7, 0.7, 2.5))
    # (39 x 2.5 / 0.01 + 1) x (511 x 0.7 / 0.01 + 1)^2 = 9,751 x 35,771^2 voxels
    with pytest.raises(LunakitError, match=r"would make 1\.25e\+13 voxels"):
        ct.resampled(scan, (0.01, 0.01, 0.01))
    for bad in [(0.0, 1.0, 1.0), (float("nan"), 1.0, 1.0), (1.0, 1.0)]:
        with pytest.raises(LunakitError):
            ct.resampled(scan, bad)
    for bad in [(0.05, 1.0, 1.0), (1.0, 1.0, 11.0), (1.0, 1.0), "1", (float("inf"), 1.0, 1.0)]:
        with pytest.raises(AnalysisError, match="resample_mm must be null or 3 spacings"):
            AnalysisOptions(resample_mm=bad)
    assert AnalysisOptions().resample_mm is None  # the book's way by default
    assert AnalysisOptions.from_dict({"resample_mm": [1, 0.8, 0.8]}).to_dict()["resample_mm"] == [1.0, 0.8, 0.8]


@pytest.fixture(scope="module")
def resampling_bundle(bundle, tmp_path_factory) -> Path:
    """The test bundle with resample_mm = 1.5 x 1.2 x 1.2 mm in its manifest."""
    out = tmp_path_factory.mktemp("resampling") / "bundle"
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["options"]["resample_mm"] = [1.5, 1.2, 1.2]
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_both_runtimes_resample_alike_and_report_in_the_scans_grid(scan_path, bundle, resampling_bundle):
    scan = ct.load(scan_path)
    models, options, _ = load_bundle(resampling_bundle)
    assert options.resample_mm == (1.5, 1.2, 1.2)
    python = analyze(scan, models, options)
    engine = CppAnalyzer(resampling_bundle)
    cpp = engine.analyze(scan)
    assert python, "the test bundle marks some voxels"
    assert_same_findings(
        findings_document(scan, python, options, models.checksums),
        findings_document(scan, cpp, engine.options, engine.checksums),
    )
    # reported in the scan's own grid: center_irc is where center_xyz lies in the given scan
    for f in python:
        np.testing.assert_allclose(scan.geometry.xyz_to_irc(np.array(f.center_xyz)), f.center_irc, atol=1e-6)
        assert all(0 <= lo <= hi < n for lo, hi, n in zip(*f.bbox_irc, scan.hu.shape))
    # the same as analyzing the resampled scan by hand, in its own indices
    analyzed = ct.resampled(scan, options.resample_mm)
    plain = analyze(analyzed, models, AnalysisOptions.from_dict({**options.to_dict(), "resample_mm": None}))
    assert [f.center_xyz for f in python] == [f.center_xyz for f in plain]
    assert [f.voxel_count for f in python] == [f.voxel_count for f in plain]
    # the findings' mask comes back on the scan's voxels
    findings, mask_of = analyze_with_mask(scan, models, options)
    mask = mask_of()
    assert mask.shape == scan.hu.shape and mask.any()


def test_resampling_to_the_scans_own_spacing_changes_nothing(scan_path, bundle):
    scan = ct.load(scan_path)
    models, options, _ = load_bundle(bundle)
    own = AnalysisOptions.from_dict({**options.to_dict(), "resample_mm": list(scan.geometry.spacing_xyz[::-1])})
    plain, resampled = analyze(scan, models, options), analyze(scan, models, own)
    assert plain and [f.to_dict() for f in plain] == [f.to_dict() for f in resampled]
