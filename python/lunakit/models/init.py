"""Weight initialization shared by lunakit's models.

The book initializes every convolution and linear layer the same way: weights
from a Kaiming normal in fan-out mode (ReLU gain), biases from a uniform
distribution whose bound is 1/sqrt(fan_out). Batch norms keep PyTorch's
defaults (weight 1, bias 0).
"""

from __future__ import annotations

import math

import torch
from torch import nn

_INITIALIZED_LAYERS = (nn.Linear, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def fan_out_of(weight: torch.Tensor) -> int:
    """Fan-out as `kaiming_normal_(mode='fan_out')` counts it: size(0) x receptive field."""
    receptive_field = 1
    for size in weight.shape[2:]:
        receptive_field *= int(size)
    return int(weight.shape[0]) * receptive_field


@torch.no_grad()
def init_weights(module: nn.Module) -> None:
    """Book-style initialization of every conv / linear layer inside `module`."""
    for layer in module.modules():
        if isinstance(layer, _INITIALIZED_LAYERS):
            nn.init.kaiming_normal_(layer.weight, a=0.0, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                bound = 1.0 / math.sqrt(fan_out_of(layer.weight))
                nn.init.uniform_(layer.bias, -bound, bound)
