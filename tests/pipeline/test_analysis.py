"""The end-to-end pipeline against an independent scipy/numpy reference, on phantom scans."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from lunakit.io import ct
from lunakit.io.luna import find_scans, read_annotations
from lunakit.pipeline.analyze import analyze
from lunakit.pipeline.options import AnalysisError, AnalysisOptions, Models

from helpers import brute_force_cores_3d, scipy_cores, scipy_lung_field

THRESHOLD_HU = -600.0  # below ground glass, above aerated lung


class ThresholdSeg(torch.nn.Module):
    """A stand-in U-Net: probability > 0.5 exactly where the center slice is above THRESHOLD_HU."""

    def __init__(self, threshold_hu: float = THRESHOLD_HU) -> None:
        super().__init__()
        self.threshold_hu = threshold_hu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        center = x.shape[1] // 2
        return torch.sigmoid((x[:, center : center + 1] - self.threshold_hu) / 10.0)


class MeanCls(torch.nn.Module):
    """A stand-in classifier whose p_positive grows with the crop's mean HU."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = x.mean(dim=(1, 2, 3, 4))
        logits = torch.stack([torch.zeros_like(mean), (mean + 600.0) / 100.0], dim=1)
        return logits, torch.softmax(logits, dim=1)


def reference_pipeline(hu: np.ndarray, options: AnalysisOptions):
    """The same steps written the plain way: numpy threshold, scipy erosion/label/center, slicing."""
    mask = hu.astype(np.float32) > THRESHOLD_HU
    for _ in range(options.erosion_iterations):
        mask = ndimage.binary_erosion(mask)
    labels, count = ndimage.label(mask)
    index = np.arange(1, count + 1)
    weights = np.clip(hu.astype(np.float64), -1000, 1000) + 1001
    centers = np.array(ndimage.center_of_mass(weights, labels, index)).reshape(-1, 3)
    voxels = ndimage.sum_labels(np.ones_like(hu, dtype=np.int64), labels, index)
    size = np.array(options.crop_size)
    p_nodule = []
    for center in centers:
        start = np.rint(center - size / 2).astype(int)
        start = np.clip(start, 0, np.array(hu.shape) - size)  # "shift" mode
        crop = hu[start[0] : start[0] + size[0], start[1] : start[1] + size[1], start[2] : start[2] + size[2]]
        mean = np.clip(crop.astype(np.float64), -1000, 1000).mean()
        p_nodule.append(1.0 / (1.0 + math.exp(-(mean + 600.0) / 100.0)))
    return centers, voxels, np.array(p_nodule)


@pytest.fixture(scope="module")
def phantom_scan(phantom_root):
    series_uid, path = sorted(find_scans(phantom_root).items())[0]
    return ct.load(path)


def test_pipeline_matches_scipy_reference(phantom_scan):
    options = AnalysisOptions(seg_batch_size=5, cls_batch_size=7)
    findings = analyze(phantom_scan, Models(seg=ThresholdSeg(), cls=MeanCls()), options)
    centers, voxels, p_nodule = reference_pipeline(phantom_scan.hu, options)
    assert len(findings) == len(centers) > 0
    order = np.argsort(-p_nodule, kind="stable")
    got_centers = np.array([f.center_irc for f in findings])
    np.testing.assert_allclose(got_centers, centers[order], rtol=0, atol=1e-9)
    np.testing.assert_array_equal([f.voxel_count for f in findings], voxels[order])
    np.testing.assert_allclose([f.p_nodule for f in findings], p_nodule[order], rtol=1e-5, atol=1e-6)
    spacing = phantom_scan.geometry.spacing_xyz
    first = findings[0]
    assert first.diameter_mm == pytest.approx((6 * first.voxel_count * np.prod(spacing) / math.pi) ** (1 / 3))
    np.testing.assert_allclose(first.center_xyz, phantom_scan.geometry.irc_to_xyz(np.array(first.center_irc)))
    lo, hi = first.bbox_irc
    assert all(lo[k] <= first.center_irc[k] <= hi[k] for k in range(3))


@pytest.mark.parametrize("mode", ["core", "core3d"])
def test_core_centers_match_scipy_reference(phantom_scan, mode):
    """center_mode "core" / "core3d": each component's weighted center over its core (scipy's
    in-plane chamfer transform / the brute-force 3D depth at the scan's spacing, for components
    of up to 20,000 voxels: the body's is too large for it); voxel counts and boxes stay those of
    "mass"."""
    mask = ndimage.binary_erosion(phantom_scan.hu.astype(np.float32) > THRESHOLD_HU)
    labels, count = ndimage.label(mask)
    if mode == "core":
        core_mask = scipy_cores(labels, count)
    else:
        core_mask = brute_force_cores_3d(labels, count, phantom_scan.geometry.spacing_xyz[::-1], max_voxels=20_000)
    core_labels = np.where(core_mask, labels, 0)
    weights = np.clip(phantom_scan.hu.astype(np.float64), -1000, 1000) + 1001
    centers = np.array(ndimage.center_of_mass(weights, core_labels, np.arange(1, count + 1))).reshape(-1, 3)
    boxes = ndimage.find_objects(labels)
    want = {tuple(b.start for b in box): center for box, center in zip(boxes, centers)}

    models = Models(seg=ThresholdSeg(), cls=MeanCls())
    core = analyze(phantom_scan, models, AnalysisOptions(center_mode=mode))
    mass = analyze(phantom_scan, models, AnalysisOptions())
    assert len(core) == count > 0
    compared = [f for f in core if f.voxel_count <= 20_000]
    assert len(compared) >= count - 2
    for f in compared:
        np.testing.assert_allclose(f.center_irc, want[f.bbox_irc[0]], rtol=0, atol=1e-9)
    assert sorted((f.bbox_irc, f.voxel_count) for f in core) == sorted((f.bbox_irc, f.voxel_count) for f in mass)
    moved = [np.abs(np.subtract(f.center_irc, want[f.bbox_irc[0]])).max() for f in mass]
    assert max(moved) > 0.5  # the two modes differ somewhere on this scan


def test_lung_margin_keeps_the_candidates_near_the_scipy_lung_field(phantom_scan):
    """lung_margin_mm: exactly the findings whose center lies within the margin of the lung
    field (scipy reference, brute-force distances); the others are dropped before scoring."""
    models = Models(seg=ThresholdSeg(), cls=MeanCls())
    every = analyze(phantom_scan, models, AnalysisOptions())
    near = analyze(phantom_scan, models, AnalysisOptions(lung_margin_mm=1.5))
    lungs = np.argwhere(scipy_lung_field(phantom_scan.hu)).astype(np.float64)
    spacing = np.asarray(phantom_scan.geometry.spacing_xyz[::-1])

    def distance_mm(f) -> float:
        return float(np.sqrt((((lungs - np.asarray(f.center_irc)) * spacing) ** 2).sum(axis=1)).min())

    want = sorted(f.bbox_irc for f in every if distance_mm(f) <= 1.5)
    assert 0 < len(want) < len(every)
    assert sorted(f.bbox_irc for f in near) == want


def test_min_diameter_keeps_the_reference_components_of_that_size(phantom_scan):
    """min_diameter_mm: the scipy reference's components whose equal-volume diameter reaches it."""
    centers, voxels, p_nodule = reference_pipeline(phantom_scan.hu, AnalysisOptions())
    volume_mm3 = voxels * float(np.prod(phantom_scan.geometry.spacing_xyz))
    diameters = (6 * volume_mm3 / math.pi) ** (1 / 3)
    sizes = np.unique(diameters)
    cut = float(sizes[len(sizes) // 2 - 1] + sizes[len(sizes) // 2]) / 2  # between two sizes found
    kept = diameters >= cut
    assert 0 < kept.sum() < len(kept)
    findings = analyze(phantom_scan, Models(seg=ThresholdSeg(), cls=MeanCls()), AnalysisOptions(min_diameter_mm=cut))
    order = np.argsort(-p_nodule[kept], kind="stable")
    np.testing.assert_allclose([f.center_irc for f in findings], centers[kept][order], rtol=0, atol=1e-9)
    assert all(f.diameter_mm >= cut - 1e-9 for f in findings)
    nothing = analyze(phantom_scan, Models(seg=ThresholdSeg(), cls=MeanCls()), AnalysisOptions(min_diameter_mm=1e4))
    assert nothing == []
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(AnalysisError, match="min_diameter_mm"):
            AnalysisOptions(min_diameter_mm=bad)


def test_every_annotated_nodule_is_found(phantom_root, phantom_scan):
    """With a segmenter that sees dense tissue, each annotated nodule lies inside a finding's box
    (a juxtapleural or vessel-attached nodule may share its component with the wall or vessel)."""
    findings = analyze(phantom_scan, Models(seg=ThresholdSeg(), cls=MeanCls()), AnalysisOptions())
    nodules = [a for a in read_annotations(phantom_root / "annotations.csv") if a.series_uid == phantom_scan.series_uid]
    assert nodules
    boxes = np.array([f.bbox_irc for f in findings])  # (K, 2, 3)
    for nodule in nodules:
        center_irc = phantom_scan.geometry.xyz_to_irc(np.array(nodule.center_xyz))
        inside = np.all((boxes[:, 0] - 0.5 <= center_irc) & (center_irc <= boxes[:, 1] + 0.5), axis=1)
        assert inside.any(), nodule


def test_malignancy_only_on_nodules(phantom_scan):
    models = Models(seg=ThresholdSeg(), cls=MeanCls(), mal=MeanCls())
    every = analyze(phantom_scan, models, AnalysisOptions())
    assert all(f.p_malignant == pytest.approx(f.p_nodule) for f in every)  # same stand-in model
    threshold = float(np.median([f.p_nodule for f in every]))
    findings = analyze(phantom_scan, models, AnalysisOptions(malignancy_on="nodules", nodule_threshold=threshold))
    assert any(f.p_nodule > threshold for f in findings) and any(f.p_nodule <= threshold for f in findings)
    for f in findings:
        assert (f.p_malignant is not None) == (f.p_nodule > threshold)


def test_scripted_models_give_the_same_findings(phantom_scan):
    eager = analyze(phantom_scan, Models(seg=ThresholdSeg(), cls=MeanCls()), AnalysisOptions())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated upstream
        models = Models(seg=torch.jit.script(ThresholdSeg()), cls=torch.jit.script(MeanCls()))
    scripted = analyze(phantom_scan, models, AnalysisOptions())
    assert [f.to_dict() for f in eager] == [f.to_dict() for f in scripted]


def test_options_round_trip_and_validation():
    options = AnalysisOptions(seg_threshold=0.4, crop_mode="pad", connectivity=26)
    assert AnalysisOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    for bad in (
        {"connectivity": 5},
        {"crop_mode": "wrap"},
        {"seg_threshold": 1.5},
        {"hu_min": 10, "hu_max": 0},
        {"crop_size": (0, 48, 48)},
        {"malignancy_on": "some"},
        {"center_mode": "peak"},
    ):
        with pytest.raises(AnalysisError):
            AnalysisOptions(**bad)
    with pytest.raises(AnalysisError, match="unknown field"):
        AnalysisOptions.from_dict({"thresh": 1})


def _scan(hu: np.ndarray) -> ct.CtScan:
    return ct.CtScan(hu=hu, geometry=ct.Geometry.identity(), series_uid="t", path="t.mhd")


@pytest.mark.parametrize(
    "shape, message",
    [((1, 64, 64), "1 slice"), ((20, 64, 64), "smaller than the crop"), ((40, 30, 64), "smaller than the crop")],
)
def test_scans_the_pipeline_cannot_take(shape, message):
    with pytest.raises(AnalysisError, match=message):
        analyze(_scan(np.zeros(shape, dtype=np.int16)), Models(seg=ThresholdSeg(), cls=MeanCls()))


def test_nan_volume_is_refused():
    hu = np.zeros((40, 64, 64), dtype=np.float32)
    hu[3, 4, 5] = np.nan
    with pytest.raises(AnalysisError, match="NaN"):
        analyze(_scan(hu), Models(seg=ThresholdSeg(), cls=MeanCls()))


def test_empty_mask_gives_no_findings():
    hu = np.full((40, 64, 64), -1000, dtype=np.int16)
    assert analyze(_scan(hu), Models(seg=ThresholdSeg(), cls=MeanCls())) == []
