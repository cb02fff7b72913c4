"""Plain helpers the tests share (fixtures live in conftest.py): the real data, luna_infer, the
references for component cores (scipy, brute force), and the Python-vs-C++ findings comparison."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lunakit.models import LunaModel, UNetWrapper


def scipy_cores(labels: np.ndarray, count: int) -> np.ndarray:
    """The reference for ops.component_cores: each component's voxels of greatest in-plane taxicab
    depth, from scipy's per-slice chamfer transform (the slice border as background)."""
    from scipy import ndimage

    mask = labels > 0
    depth = np.stack([ndimage.distance_transform_cdt(np.pad(s, 1), metric="taxicab")[1:-1, 1:-1] for s in mask])
    deepest = np.asarray(ndimage.maximum(depth, labels, np.arange(count + 1)))
    return mask & (depth == deepest[labels])


def brute_force_cores_3d(labels: np.ndarray, count: int, spacing_irc, max_voxels: int | None = None) -> np.ndarray:
    """The reference for ops.component_cores with a spacing: for every voxel of each component,
    the least sum over axes of spacing x |offset| to any voxel outside the component, tried one
    by one inside the component's box grown by one voxel (a nearer outside voxel beyond the box
    would project onto the box's shell, nearer still); ties within 1e-6 mm. Components of more
    than max_voxels voxels are left out (no core)."""
    from scipy import ndimage

    step = np.asarray(spacing_irc, dtype=np.float64)
    core = np.zeros(labels.shape, dtype=bool)
    padded = np.pad(labels, 1)
    for k, box in enumerate(ndimage.find_objects(padded), start=1):
        if box is None:
            continue
        grown = tuple(slice(b.start - 1, b.stop + 1) for b in box)
        inside = padded[grown] == k
        if max_voxels is not None and inside.sum() > max_voxels:
            continue
        points = np.argwhere(inside).astype(np.float64) * step
        outside = np.argwhere(~inside).astype(np.float64) * step
        depth = np.concatenate(
            [
                np.abs(chunk[:, None, :] - outside[None]).sum(axis=2).min(axis=1)
                for chunk in np.array_split(points, 1 + len(points) // 256)
            ]
        )
        deep = np.argwhere(inside)[depth >= depth.max() - 1e-6]
        origin = np.array([b.start - 1 for b in box]) - 1  # grown box -> labels' indices
        core[tuple((deep + origin).T)] = True
    return core


def scipy_lung_field(hu: np.ndarray) -> np.ndarray:
    """The reference for ops.lung_field, with scipy: air below -400 HU in 6-connected components
    reaching no slice's edge, of at least 5% of the largest air component and a mean above -930
    HU, each slice's holes filled (binary_fill_holes, 4-connected)."""
    from scipy import ndimage

    air = hu < -400
    labels, n = ndimage.label(air)
    if n == 0:
        return np.zeros(hu.shape, dtype=bool)
    edge = np.zeros(hu.shape, dtype=bool)
    edge[:, [0, -1], :] = True
    edge[:, :, [0, -1]] = True
    index = np.arange(1, n + 1)
    sizes = np.asarray(ndimage.sum_labels(np.ones(hu.shape), labels, index))
    means = np.asarray(ndimage.mean(hu.astype(np.float64), labels, index))
    keep = (sizes >= 0.05 * sizes.max()) & (means > -930) & ~np.isin(index, labels[edge & air])
    lungs = np.isin(labels, index[keep])
    return np.stack([ndimage.binary_fill_holes(s) for s in lungs])


def read_rows(path: Path) -> list[dict[str, str]]:
    """A CSV table's rows as dicts keyed by its header."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def require(path: Path) -> Path:
    """A file of the real data that must exist (a missing one fails the test, never skips it)."""
    assert path.exists(), f"missing test data file: {path}"
    return path


# luna_infer as installed beside this Python; LUNAKIT_LUNA_INFER names another build of it
LUNA_INFER = Path(os.environ.get("LUNAKIT_LUNA_INFER") or Path(sys.executable).parent / "luna_infer")
REAL_CT = Path("ct") / "C3N-00247-chest-ct"  # the real chest CT, under LUNAKIT_TEST_DATA
REAL_SERIES_UID = "1.3.6.1.4.1.14519.5.2.1.7085.2626.242193282649561899185427104083"


def run_luna_infer(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """luna_infer (installed beside this Python) with args; its output captured as text."""
    assert LUNA_INFER.exists(), f"luna_infer is not installed at {LUNA_INFER}"
    return subprocess.run([str(LUNA_INFER), *args], capture_output=True, text=True, timeout=timeout)


def component_key(finding: dict[str, Any]) -> tuple:
    return tuple(finding["bbox_irc"][0]), tuple(finding["bbox_irc"][1]), finding["voxel_count"]


def assert_same_findings(py: dict, cpp: dict) -> dict[str, float]:
    """The parity criteria; returns the largest differences seen."""
    for field in ("series_uid", "size_irc", "options", "model_sha256", "lunakit_version", "torch_version"):
        assert cpp[field] == py[field], field
    for field in ("origin_xyz", "spacing_xyz", "direction"):
        np.testing.assert_allclose(cpp["geometry"][field], py["geometry"][field], rtol=0, atol=1e-9)
    pf, cf = py["findings"], cpp["findings"]
    assert len(cf) == len(pf)
    for findings in (pf, cf):  # each sorted by p_nodule, highest first
        p = [f["p_nodule"] for f in findings]
        assert all(a >= b for a, b in zip(p, p[1:]))
    pf, cf = sorted(pf, key=component_key), sorted(cf, key=component_key)
    assert [component_key(f) for f in cf] == [component_key(f) for f in pf]
    diffs = {"count": float(len(cf)), "center_irc": 0.0, "center_xyz_mm": 0.0, "p_nodule": 0.0, "p_malignant": 0.0}
    if not pf:
        return diffs
    diffs["center_irc"] = float(np.abs(np.array([f["center_irc"] for f in cf]) - [f["center_irc"] for f in pf]).max())
    diffs["center_xyz_mm"] = float(
        np.abs(np.array([f["center_xyz"] for f in cf]) - [f["center_xyz"] for f in pf]).max()
    )
    diffs["p_nodule"] = float(np.abs(np.array([f["p_nodule"] for f in cf]) - [f["p_nodule"] for f in pf]).max())
    np.testing.assert_allclose([f["diameter_mm"] for f in cf], [f["diameter_mm"] for f in pf], rtol=1e-12)
    assert [f["p_malignant"] is None for f in cf] == [f["p_malignant"] is None for f in pf]
    mal = [(c["p_malignant"], p["p_malignant"]) for c, p in zip(cf, pf) if p["p_malignant"] is not None]
    if mal:
        diffs["p_malignant"] = float(np.abs(np.subtract(*zip(*mal))).max())
    assert diffs["center_irc"] <= 1e-3
    assert diffs["p_nodule"] <= 1e-4
    assert diffs["p_malignant"] <= 1e-4
    return diffs


def hu_normalised(model: torch.nn.Module) -> torch.nn.Module:
    """A fresh model whose input batch norm expects HU (mean -500, sd 500), as a trained one does:
    without it raw HU saturate every output at 0 or 1."""
    norm = model.input_batchnorm if isinstance(model, UNetWrapper) else model.tail_batchnorm
    norm.running_mean.fill_(-500.0)
    norm.running_var.fill_(500.0**2)
    return model.eval()


def calibrated(classifier: LunaModel, hu: np.ndarray) -> LunaModel:
    """Scale and shift a fresh classifier's head so its logit difference on crops of this scan has
    mean 0 and sd 1.5: probabilities spread over (0, 1) instead of sitting at 0 or 1."""
    rng = np.random.default_rng(5)
    volume = torch.from_numpy(hu).float().clamp(-1000, 1000)
    corners = [[int(rng.integers(0, n - s + 1)) for n, s in zip(hu.shape, (32, 48, 48))] for _ in range(32)]
    crops = torch.stack([volume[i : i + 32, r : r + 48, c : c + 48] for i, r, c in corners])[:, None]
    head = classifier.head_linear
    with torch.no_grad():
        logits, _ = classifier(crops)
        scale = 1.5 / float((logits[:, 1] - logits[:, 0]).std())
        head.weight.mul_(scale)
        head.bias.mul_(scale)
        logits, _ = classifier(crops)
        head.bias[1] -= float((logits[:, 1] - logits[:, 0]).mean())
    return classifier


def threshold_for_candidates(seg: torch.nn.Module, hu: np.ndarray, low: int = 15, high: int = 60) -> float:
    """A seg threshold giving low..high components after the erosion (scipy, as the pipeline does)."""
    import scipy.ndimage as ndi

    volume = torch.from_numpy(hu)
    n = volume.shape[0]
    index = (torch.arange(n)[:, None] + torch.arange(-3, 4)[None]).clamp(0, n - 1)
    with torch.no_grad():
        prob = seg(volume[index].float().clamp(-1000, 1000))[:, 0].numpy()  # (I, R, C)
    cross = ndi.generate_binary_structure(3, 1)
    for q in np.linspace(0.80, 0.99, 39):
        threshold = float(np.quantile(prob, q))
        count = ndi.label(ndi.binary_erosion(prob > threshold, cross), cross)[1]
        if low <= count <= high:
            return threshold
    raise AssertionError("no seg threshold gives some tens of candidates")
