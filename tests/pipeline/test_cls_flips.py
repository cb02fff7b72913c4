"""The cls_flips option (test-time augmentation): each classifier's probability is the mean over
the crop's 8 mirror images. Checked against hand-computed means: a model that reads one corner
voxel sees each of the crop's 8 corners once; a model antisymmetric under a column flip averages
to exactly 1/2. Both runtimes agreeing on whole scans is in tests/cpp/test_cpp_parity.py."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lunakit.pipeline.analyze import classify_crops
from lunakit.pipeline.options import AnalysisError, AnalysisOptions, Models


class CornerModel(torch.nn.Module):
    """p = sigmoid(the crop's first voxel): a mirror moves another corner there."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = x[:, 0, 0, 0, 0]
        logits = torch.stack([torch.zeros_like(a), a], dim=1)
        return logits, torch.softmax(logits, dim=1)


class LeftRightModel(torch.nn.Module):
    """p = sigmoid(mean of the left half - mean of the right half): a column flip negates it."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = x.shape[-1] // 2
        a = x[..., :half].mean(dim=(1, 2, 3, 4)) - x[..., half:].mean(dim=(1, 2, 3, 4))
        logits = torch.stack([-a, a], dim=1)
        return logits, torch.softmax(logits, dim=1)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def crops_with_corners(corners: list[list[float]]) -> torch.Tensor:
    """Crops [B, 1, 4, 6, 6] of zeros with the given values at the 8 corners, in the order of
    itertools.product over (first, last) of slice, row and column."""
    crops = torch.zeros(len(corners), 1, 4, 6, 6)
    for b, values in enumerate(corners):
        for (i, r, c), v in zip(itertools.product((0, -1), repeat=3), values):
            crops[b, 0, i, r, c] = v
    return crops


def test_mirror_mean_visits_every_corner_once():
    corners = [[0.5, -1.0, 2.0, 0.25, -3.0, 1.5, -0.5, 4.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -2.0]]
    crops = crops_with_corners(corners)
    models = Models(seg=torch.nn.Identity(), cls=CornerModel().eval(), mal=CornerModel().eval())
    on = AnalysisOptions(cls_flips=True, crop_size=(4, 6, 6))
    p_nodule, p_malignant = classify_crops(crops, models, on)
    for b, values in enumerate(corners):
        expected = sum(sigmoid(v) for v in values) / 8
        assert p_nodule[b].item() == pytest.approx(expected, abs=1e-7)
        assert p_malignant[b].item() == pytest.approx(expected, abs=1e-7)
    off, _ = classify_crops(crops, models, AnalysisOptions(crop_size=(4, 6, 6)))
    assert off.tolist() == pytest.approx([sigmoid(values[0]) for values in corners], abs=1e-7)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_left_right_model_averages_to_one_half(precision):
    torch.manual_seed(3)
    crops = torch.randn(5, 1, 4, 6, 6) + torch.linspace(-1, 1, 6)  # left and right differ
    models = Models(seg=torch.nn.Identity(), cls=LeftRightModel().eval())
    off, _ = classify_crops(crops, models, AnalysisOptions(crop_size=(4, 6, 6), precision=precision))
    assert (off - 0.5).abs().min() > 0.1
    # bf16 rechecks near the threshold in fp32, so every value here is fp32's mean.
    on, _ = classify_crops(crops, models, AnalysisOptions(crop_size=(4, 6, 6), cls_flips=True, precision=precision))
    assert on.tolist() == pytest.approx([0.5] * 5, abs=1e-7)


def test_cls_flips_must_be_a_boolean():
    assert AnalysisOptions().cls_flips is False  # the book's single pass
    assert AnalysisOptions.from_dict({"cls_flips": True}).to_dict()["cls_flips"] is True
    with pytest.raises(AnalysisError, match="^options: cls_flips must be true or false$"):
        AnalysisOptions.from_dict({"cls_flips": 1})
