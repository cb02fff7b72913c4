"""Fast mode (precision "bf16", docs/pipeline.md "Fast mode") against exact mode, its reference.

The rechecks' rules are held on synthetic probabilities against scipy's erosion; the fp32 tile
recheck against the whole-slice fp32 mask; the whole pipeline, in both runtimes, against exact
mode's findings on a phantom with the tolerance the mode promises (the real CT with the book's
weights: tests/book/test_fast_mode_book.py). Timing is the benchmark's business, not these tests'.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from lunakit.cli import main
from lunakit.io import ct
from lunakit.pipeline import analyze as pipeline
from lunakit.pipeline import precision
from lunakit.pipeline.options import AnalysisOptions, Finding

from helpers import run_luna_infer

CROSS = ndimage.generate_binary_structure(3, 1)


def scipy_eroded(mask: np.ndarray, iterations: int) -> np.ndarray:
    """The pipeline's erosion (6-connected cross, outside = background), by scipy."""
    if iterations == 0:
        return mask
    return ndimage.binary_erosion(mask, structure=CROSS, iterations=iterations, border_value=0)


@pytest.mark.parametrize("iterations", [0, 1, 2])
def test_rechecked_voxels_give_the_exact_eroded_mask(iterations):
    """bf16 errors below the margin everywhere: taking fp32's side on the recheck voxels alone
    gives fp32's eroded mask, while bf16's mask alone does not."""
    rng = np.random.default_rng(iterations)
    smooth = ndimage.gaussian_filter(rng.standard_normal((12, 40, 40)), 1.5)
    exact = 1.0 / (1.0 + np.exp(-8.0 * smooth / smooth.std()))  # graded, many voxels near 0.5
    fast = np.clip(exact + rng.uniform(-0.44, 0.44, exact.shape) * (rng.random(exact.shape) < 0.2), 0, 1)
    mask = torch.from_numpy(fast > 0.5)
    near = torch.from_numpy(np.abs(fast - 0.5) < precision.SEG_MARGIN)
    recheck = precision.recheck_voxels(mask, near, iterations).numpy()
    final = np.where(recheck, exact > 0.5, fast > 0.5)
    want = scipy_eroded(exact > 0.5, iterations)
    assert (scipy_eroded(fast > 0.5, iterations) != want).any()  # the recheck has work to do
    np.testing.assert_array_equal(scipy_eroded(final, iterations), want)
    if iterations:  # without erosion every near voxel counts; with it, the sure voxels decide most
        assert recheck.sum() < near.numpy().sum()


def test_dilate_is_scipys():
    mask = np.random.default_rng(0).random((6, 9, 7)) > 0.9
    want = ndimage.binary_dilation(mask, structure=CROSS)
    np.testing.assert_array_equal(precision.dilate(torch.from_numpy(mask)).numpy(), want)


def test_tolerance_counts():
    def f(x: float, p: float) -> Finding:
        return Finding((x, 0.0, 0.0), (0.0, 0.0, x), 10, ((0, 0, 0), (1, 1, 1)), 3.0, p)

    exact = [f(0.0, 0.9), f(10.0, 0.2), f(20.0, 0.6), f(30.0, 0.1)]
    fast = [f(0.3, 0.905), f(10.2, 0.7), f(21.0, 0.6), f(30.0, 0.1), f(40.0, 0.8)]
    report = precision.tolerance(exact, fast, 0.5)
    assert report["matched"] == 0.75  # 20.0 moved 1 mm
    assert report["positives"] == 2
    assert report["max_dp_positives"] == float("inf")  # the one at 20.0 is lost
    assert report["new_positives"] == 3  # 10.2 (0.2 -> 0.7), 21.0 (unmatched), 40.0 (new)
    assert report["holds"] is False
    assert precision.tolerance(exact, exact, 0.5)["holds"] is True
    assert precision.tolerance(exact[:1], fast[:1], 0.5)["max_dp_positives"] == pytest.approx(0.005)


def test_the_fp32_tile_recheck_is_the_whole_slice_fp32(checkpoints, scan_path):
    """Every voxel rechecked in tiles with the probed halo: the mask is the fp32 U-Net's."""
    from lunakit.models.checkpoint import load_checkpoint

    seg, _ = load_checkpoint(checkpoints["seg"])
    seg.eval()
    hu = torch.from_numpy(ct.load(scan_path).hu[20:24].copy())
    options = AnalysisOptions()
    with torch.inference_mode():
        prob = pipeline.slice_probability(hu, seg, options, 0, len(hu))
        threshold = float(prob.median())  # a threshold that splits this U-Net's output
        options = AnalysisOptions(seg_threshold=threshold)
        want = prob > threshold
        assert precision.tile_halo(seg, 3, torch.device("cpu"), hu.shape[1], hu.shape[2]) is not None
        mask = ~want  # every voxel wrong before the recheck
        windows = pipeline.recheck_in_fp32(hu, seg, options, mask, torch.ones_like(mask))
    assert windows == len(hu) * 9  # 96 x 96 slices: 3 x 3 tiles of 32
    assert torch.equal(mask, want)


def test_precision_resolves():
    assert precision.resolve("fp32", torch.device("cpu")) == "fp32"
    assert precision.resolve("bf16", torch.device("cpu")) == "bf16"
    native = open("/proc/cpuinfo").read().split()
    has = any(flag in native for flag in ("avx512_bf16", "amx_bf16", "bf16"))
    assert precision.resolve("auto", torch.device("cpu")) == ("bf16" if has else "fp32")


@pytest.fixture(scope="module")
def runs(bundle, scan_path, tmp_path_factory):
    """findings.json of `lunakit analyze` and `luna_infer analyze` in each precision."""
    out = {}
    root = tmp_path_factory.mktemp("fast")
    for mode in ("fp32", "bf16"):
        folder = root / f"py-{mode}"
        args = ["analyze", str(scan_path), "--bundle", str(bundle), "--out", str(folder), "--quiet"]
        assert main(args + ([] if mode == "fp32" else ["--precision", mode])) == 0
        out["py", mode] = json.loads((folder / "findings.json").read_text())
        path = root / f"cpp-{mode}.json"
        args = ["analyze", "--bundle", str(bundle), "--input", str(scan_path), "--output", str(path), "--quiet"]
        result = run_luna_infer(*args, *([] if mode == "fp32" else ["--precision", mode]))
        assert result.returncode == 0, result.stderr
        out["cpp", mode] = json.loads(path.read_text())
    return out


def test_findings_record_the_precision(runs):
    for (_, mode), document in runs.items():
        assert document["options"]["precision"] == mode


@pytest.mark.parametrize("runtime", ["py", "cpp"])
def test_fast_mode_holds_the_tolerance(runs, runtime):
    exact, fast = runs[runtime, "fp32"], runs[runtime, "bf16"]
    threshold = exact["options"]["nodule_threshold"]
    report = precision.tolerance(exact["findings"], fast["findings"], threshold)
    assert report["positives"] > 0 and report["candidates_exact"] > 20, report
    assert report["matched"] >= 0.99, report
    assert report["max_dp_positives"] < 0.01, report
    assert report["new_positives"] == 0, report


def test_exact_mode_is_the_same_in_both_runtimes(runs):
    report = precision.tolerance(runs["py", "fp32"]["findings"], runs["cpp", "fp32"]["findings"], 0.0, 1e-3)
    assert report["matched"] == 1.0 and report["max_dp_positives"] < 1e-4, report


@pytest.mark.parametrize("value", ["fp16", "BF16", ""])
def test_a_bad_precision_is_one_line_and_exit_2(bundle, scan_path, tmp_path, capsys, value):
    args = ["analyze", str(scan_path), "--bundle", str(bundle), "--out", str(tmp_path / "o"), "--precision", value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"lunakit: error: --precision {value}: must be 'fp32', 'bf16' or 'auto'\n"
    assert not (tmp_path / "o").exists()
    cpp_args = ["analyze", "--bundle", str(bundle), "--input", str(scan_path), "--output", str(tmp_path / "f.json")]
    result = run_luna_infer(*cpp_args, "--precision", value)
    assert result.returncode == 2
    assert result.stderr == f"luna_infer: error: --precision {value}: must be 'fp32', 'bf16' or 'auto'\n"
    assert not (tmp_path / "f.json").exists()
