"""An exponential moving average of a model's weights over the optimizer steps (`--ema DECAY`).

The weights at the end of an epoch are one noisy point of the optimizer's path; validation
metrics then jump from epoch to epoch (the demo segmenter's pixel precision swung between
0.11 and 0.38). The average of the recent path is smoother and usually scores better on data
unlike the training set. With it on, validation, best.pt and `lunakit last-checkpoint` use the
averaged model; the optimizer keeps training the raw one.

After step t the average moves toward the weights by 1 - d_t, with
d_t = min(decay, (1 + t) / (10 + t)): early on d_t is small, so the random initial weights
fade out within the first steps, and a short run still averages its own recent steps. Batch-norm
running statistics are averaged the same way; integer buffers (the batch counter) are copied.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from lunakit.models.checkpoint import cpu_state_dict


class WeightAverage:
    """The averaged copy of `model` (same architecture, device and memory format)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"the average's decay must lie in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.steps = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def rate(self) -> float:
        """The decay used by the next update."""
        return min(self.decay, (1 + self.steps) / (10 + self.steps))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward `model`'s current weights and buffers (after an optimizer step)."""
        weight = 1.0 - self.rate()
        self.steps += 1
        for mine, theirs in zip(self.model.state_dict().values(), model.state_dict().values()):
            if mine.is_floating_point():
                mine.lerp_(theirs, weight)
            else:
                mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "model": cpu_state_dict(self.model)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.model.load_state_dict(state["model"])
