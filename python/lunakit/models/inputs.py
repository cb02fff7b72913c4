"""Example inputs of the networks, for the exporters (torch.export behind AOTInductor and ONNX)."""

from __future__ import annotations

import torch

from lunakit.models.classifier import CROP_SIZE_IRC


def example_input(model: torch.nn.Module, kind: str) -> torch.Tensor:
    """A batch of 2 (so export does not specialise the batch axis to 1) of the model's input.

    The U-Net's height and width (62 x 61) are NOT multiples of 4 on purpose: export records the
    branch the example takes, and only the padding branch is right for every size (it pads by 0
    when nothing is needed), while the no-padding branch would shrink odd sizes.
    """
    if kind == "seg":
        return torch.full((2, int(getattr(model, "in_channels", 7)), 62, 61), -500.0)
    return torch.full((2, int(getattr(model, "in_channels", 1))) + tuple(CROP_SIZE_IRC), -500.0)
