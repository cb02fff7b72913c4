"""The nodule / malignancy classifier: the book's LunaModel, a small 3D CNN on CT crops.

Parameter names (tail_batchnorm, block1..block4 with conv1/conv2, head_linear)
match the book's checkpoints, so a book `model_state` loads with strict=True.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lunakit.models.init import init_weights

CROP_SIZE_IRC = (32, 48, 48)
"""The crop shape (I, R, C) the classifier's head is sized for."""


class LunaBlock(nn.Module):
    """Two 3x3x3 convolutions with ReLU, then a 2x2x2 max-pool (halves each axis)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=True)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1, bias=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.conv2(x))
        return self.maxpool(x)


class LunaModel(nn.Module):
    """3D CNN on [B, in_channels, 32, 48, 48] HU crops -> (logits [B, 2], softmax [B, 2]).

    Index 1 of the output is the positive class (nodule, or malignant for the
    malignancy model), as in the book.
    """

    def __init__(self, in_channels: int = 1, conv_channels: int = 8) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv_channels = conv_channels
        self.tail_batchnorm = nn.BatchNorm3d(in_channels)
        self.block1 = LunaBlock(in_channels, conv_channels)
        self.block2 = LunaBlock(conv_channels, conv_channels * 2)
        self.block3 = LunaBlock(conv_channels * 2, conv_channels * 4)
        self.block4 = LunaBlock(conv_channels * 4, conv_channels * 8)
        # four pools: (32, 48, 48) -> (2, 3, 3); 8 * conv_channels channels
        flat_features = (
            conv_channels * 8 * (CROP_SIZE_IRC[0] // 16) * (CROP_SIZE_IRC[1] // 16) * (CROP_SIZE_IRC[2] // 16)
        )
        self.head_linear = nn.Linear(flat_features, 2)
        self.head_softmax = nn.Softmax(dim=1)
        init_weights(self)

    def init_args(self) -> dict[str, Any]:
        """The constructor arguments, as checkpoints store them."""
        return {"in_channels": self.in_channels, "conv_channels": self.conv_channels}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 5 or x.shape[1] != self.in_channels or x.shape[2] != 32 or x.shape[3] != 48 or x.shape[4] != 48:
            raise ValueError("LunaModel: input must be [B, in_channels, 32, 48, 48]")
        x = self.tail_batchnorm(x)  # (B, 1, 32, 48, 48)
        x = self.block1(x)  # (B, 8, 16, 24, 24)
        x = self.block2(x)  # (B, 16, 8, 12, 12)
        x = self.block3(x)  # (B, 32, 4, 6, 6)
        x = self.block4(x)  # (B, 64, 2, 3, 3)
        x = x.flatten(1)  # (B, 1152)
        logits = self.head_linear(x)  # (B, 2)
        return logits, self.head_softmax(logits)


# The children of LunaModel that hold parameters, input side first (the book's fine-tuning unit).
PARAMETER_BLOCKS = ("tail_batchnorm", "block1", "block2", "block3", "block4", "head_linear")


def malignancy_from_classifier(
    cls_model: LunaModel, finetune_depth: int = 1, reset_head: bool = True
) -> tuple[LunaModel, list[str]]:
    """A malignancy model started from a trained nodule classifier, as the book fine-tunes it.

    Copies every weight of `cls_model` into a new LunaModel; with `reset_head`
    (the book's choice: the classes differ) the head keeps its fresh
    initialization. Only the last `finetune_depth` parameter blocks stay
    trainable (1: head only, 2: head + block4, ... up to 6: everything).
    Returns the model and the names of its trainable parameters.
    Batch-norm running statistics of frozen blocks still update in train mode.
    """
    if not 1 <= finetune_depth <= len(PARAMETER_BLOCKS):
        raise ValueError(f"finetune_depth must be 1..{len(PARAMETER_BLOCKS)}, got {finetune_depth}")
    model = LunaModel(**cls_model.init_args())
    state = cls_model.state_dict()
    if reset_head:
        state = {k: v for k, v in state.items() if k.split(".")[0] != "head_linear"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("head_linear.") for k in missing)

    trainable_blocks = set(PARAMETER_BLOCKS[-finetune_depth:])
    trainable: list[str] = []
    for name, param in model.named_parameters():
        keep = name.split(".")[0] in trainable_blocks
        param.requires_grad_(keep)
        if keep:
            trainable.append(name)
    return model, trainable
