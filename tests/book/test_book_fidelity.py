"""The book's U-Net, with the book's weights, against the book's own output on the real CT.

`bookref/seg_prob_slices_44_51.npz` holds the probabilities that the book's own code computed on
slices 44..51 (float32, stored as float16). lunakit must give the same map through every way it
runs the U-Net: the eager model, the TorchScript bundle in Python, `luna_infer segment` (C++),
and the AOTInductor and ONNX exports. The reference is not ours, so a shared misunderstanding
(max instead of average pooling) cannot hide here: the max-pooling model is shown to fail it.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lunakit.models.checkpoint import load_checkpoint
from lunakit.models.unet import UNetWrapper
from lunakit.pipeline.analyze import slice_probability
from lunakit.pipeline.options import AnalysisOptions

from helpers import REAL_CT, require, run_luna_infer

MAX_ABS_DIFF = 1e-3  # the reference is float16
MAX_FLIP_SHARE = 1e-4  # of the voxels, at 0.5


@pytest.fixture(scope="module")
def book_excerpt(test_data) -> tuple[int, np.ndarray, np.ndarray]:
    """(first slice, the book's probabilities [8, 512, 512] float32, its mask > 0.5)."""
    ref = np.load(require(test_data / "bookref" / "seg_prob_slices_44_51.npz"))
    return int(ref["first_slice"]), ref["prob"].astype(np.float32), ref["mask_gt_0_5"]


def probability(model, real_scan, first: int, count: int) -> np.ndarray:
    """The model's map on slices first..first+count-1, with the pipeline's own input stacking."""
    hu = torch.from_numpy(np.ascontiguousarray(real_scan.hu))
    with torch.inference_mode():
        return slice_probability(hu, model, AnalysisOptions(), first, first + count).numpy()


def book_difference(prob: np.ndarray, excerpt) -> tuple[float, int]:
    """(max |p - book|, voxels on the other side of 0.5 than the book's)."""
    _, ref, mask = excerpt
    assert prob.shape == ref.shape
    return float(np.abs(prob - ref).max()), int(((prob > 0.5) != mask).sum())


def assert_matches_book(prob: np.ndarray, excerpt) -> None:
    diff, flips = book_difference(prob, excerpt)
    assert diff < MAX_ABS_DIFF, f"max |p - book| = {diff}"
    assert flips <= MAX_FLIP_SHARE * prob.size, f"{flips} voxels flip at 0.5"


def test_python_model_matches_the_book(book_checkpoints, real_scan, book_excerpt):
    model, meta = load_checkpoint(book_checkpoints["seg"], kind="seg")
    assert model.pool == "avg" and meta["model_args"]["pool"] == "avg"
    first, ref, _ = book_excerpt
    assert_matches_book(probability(model, real_scan, first, len(ref)), book_excerpt)


def test_max_pooling_with_the_same_weights_does_not(book_checkpoints, real_scan, book_excerpt):
    """The check can fail: the architecture lunakit had before, with the book's weights."""
    model, meta = load_checkpoint(book_checkpoints["seg"], kind="seg")
    wrong = UNetWrapper(**{**meta["model_args"], "pool": "max"})
    wrong.load_state_dict(model.state_dict())
    first, ref, _ = book_excerpt
    diff, flips = book_difference(probability(wrong.eval(), real_scan, first, len(ref)), book_excerpt)
    assert diff > 0.5 and flips > 100 * MAX_FLIP_SHARE * ref.size


def test_torchscript_bundle_matches_the_book(book_bundle, real_scan, book_excerpt):
    from lunakit.bundle import load_bundle

    models, options, _ = load_bundle(book_bundle)
    assert isinstance(models.seg, torch.jit.ScriptModule) and models.seg.unet.pool == "avg"
    first, ref, _ = book_excerpt
    assert_matches_book(probability(models.seg, real_scan, first, len(ref)), book_excerpt)


def test_luna_infer_segment_matches_the_book(test_data, book_bundle, real_scan, book_excerpt, tmp_path):
    first, ref, _ = book_excerpt
    out = tmp_path / "prob.mhd"
    result = run_luna_infer(
        "segment",
        "--bundle",
        str(book_bundle),
        "--input",
        str(test_data / REAL_CT),
        "--output",
        str(out),
        "--first",
        str(first),
        "--count",
        str(len(ref)),
    )
    assert result.returncode == 0, result.stderr
    image = sitk.ReadImage(str(out))
    prob = sitk.GetArrayFromImage(image)
    assert prob.dtype == np.float32
    assert_matches_book(prob, book_excerpt)
    # the map sits where its slices sit in the scan
    np.testing.assert_allclose(image.GetOrigin(), real_scan.geometry.irc_to_xyz([first, 0, 0]), atol=1e-9)
    np.testing.assert_allclose(image.GetSpacing(), real_scan.geometry.spacing_xyz, atol=1e-12)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--first", "95", "--count", "8"], "slices 95..102 are not all inside the scan's 99 slices"),
        (["--count", "0"], "--count: expected an integer in 1.."),
        (["--first", "x"], "--first: expected an integer"),
    ],
)
def test_luna_infer_segment_refuses_bad_ranges(test_data, book_bundle, tmp_path, argv, message):
    out = tmp_path / "prob.mhd"
    result = run_luna_infer(
        "segment", "--bundle", str(book_bundle), "--input", str(test_data / REAL_CT), "--output", str(out), *argv
    )
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_onnx_export_matches_the_book(book_checkpoints, real_scan, book_excerpt, tmp_path):
    pytest.importorskip("onnxruntime")
    from lunakit.bundle.onnx import OnnxModel, export_model

    model, _ = load_checkpoint(book_checkpoints["seg"], kind="seg")
    onnx_model = OnnxModel(export_model(model, "seg", tmp_path / "seg.onnx"))
    first, ref, _ = book_excerpt
    assert_matches_book(probability(onnx_model, real_scan, first, len(ref)), book_excerpt)


def test_aoti_export_matches_the_book(book_checkpoints, real_scan, book_excerpt, tmp_path):
    from lunakit.bundle.aoti import AotiModel, _inductor, compile_package, export_program, input_shape

    model, _ = load_checkpoint(book_checkpoints["seg"], kind="seg")
    path = compile_package(export_program(model, "seg"), tmp_path / "seg.pt2", "seg", input_shape(model, "seg"))
    first, ref, _ = book_excerpt
    assert_matches_book(probability(AotiModel(path, _inductor()), real_scan, first, len(ref)), book_excerpt)
