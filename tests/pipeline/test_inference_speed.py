"""The speed-ups of exact mode give what the plain pipeline gives: the U-Net's input built from one
clipped slab in channels-last memory holds the same numbers as one gathered stack per slice, and
the classifiers optimized for the CPU score within 1e-5 of the models they came from. The U-Net's
probabilities move by another summation order only."""

from __future__ import annotations

import pytest
import torch

from lunakit.models.classifier import LunaModel
from lunakit.models.unet import UNetWrapper
from lunakit.pipeline.analyze import clipped_slab, slice_probability, stacks_channels_last
from lunakit.pipeline.loading import classifier_for_cpu
from lunakit.pipeline.options import AnalysisOptions


def gathered_stacks(hu: torch.Tensor, options: AnalysisOptions, start: int, stop: int) -> torch.Tensor:
    """One stack per slice, gathered and converted on its own (the plain way)."""
    offsets = torch.arange(-options.context_slices, options.context_slices + 1)
    index = (torch.arange(start, stop)[:, None] + offsets[None, :]).clamp(0, hu.shape[0] - 1)
    return hu[index].to(torch.float32).clamp(options.hu_min, options.hu_max)


@pytest.mark.parametrize("start, stop", [(0, 4), (3, 9), (10, 12), (0, 12)])
def test_stacks_from_one_slab_equal_gathered_stacks(start, stop):
    hu = torch.randint(-2000, 3000, (12, 20, 24), dtype=torch.int16, generator=torch.Generator().manual_seed(0))
    options = AnalysisOptions()
    stacks = stacks_channels_last(clipped_slab(hu, options, start, stop), options.context_slices)
    assert stacks.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(stacks, gathered_stacks(hu, options, start, stop))


def test_unet_in_channels_last_matches_contiguous_input():
    torch.manual_seed(0)
    seg = UNetWrapper().eval()
    hu = torch.randint(-1100, 400, (6, 32, 32), dtype=torch.int16)
    options = AnalysisOptions()
    with torch.inference_mode():
        fast = slice_probability(hu, seg, options, 0, 6)
        plain = seg(gathered_stacks(hu, options, 0, 6))[:, 0]
    # Another summation order, nothing more: the book's U-Net on the real CT differs by up to
    # 2.8e-4 and no voxel flips at 0.5 (tests/book/test_book_pipeline.py holds the findings).
    assert (fast - plain).abs().max() < 1e-3


def test_classifier_for_cpu_scores_as_the_model_does():
    torch.manual_seed(0)
    model = LunaModel().eval()
    crops = torch.rand(3, 1, 32, 48, 48) * 2000.0 - 1000.0
    optimized = classifier_for_cpu(model)
    assert isinstance(optimized, torch.jit.ScriptModule)
    with torch.inference_mode():
        assert (optimized(crops)[1] - model(crops)[1]).abs().max() < 1e-5


def test_classifier_for_cpu_is_made_once_per_model_and_weights():
    model = LunaModel().eval()
    first = classifier_for_cpu(model)
    assert classifier_for_cpu(model) is first
    with torch.no_grad():
        model.head_linear.bias.add_(1.0)  # an in-place update, as an optimizer step makes
    assert classifier_for_cpu(model) is not first


def test_models_it_does_not_apply_to_stay_as_they_are():
    class NoWeights(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    no_weights = NoWeights().eval()
    training = LunaModel().train()
    assert classifier_for_cpu(no_weights) is no_weights
    assert classifier_for_cpu(training) is training
    assert classifier_for_cpu(len) is len  # a callable that is no torch module (AOTInductor, ONNX)
