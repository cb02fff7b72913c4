"""The segmentation model: a 2D U-Net over 7-slice stacks, wrapped as the book's UNetWrapper.

Module names (input_batchnorm, unet.down_path.N.block.M, unet.up_path.N.up /
.conv_block, unet.last) match the book's checkpoint, so its `model_state` loads
with strict=True. The U-Net itself follows the original design of
Ronneberger et al. (2015) with the options the book uses: same-padding
convolutions, batch norm after each ReLU, transposed-convolution upsampling,
and 2x2 *average* pooling on the way down. No weight shape reveals the pooling,
so it is an architecture parameter (`pool`) that every checkpoint stores; a
checkpoint written before the parameter existed was trained with max pooling
(`LEGACY_POOL`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lunakit.models.init import init_weights

UP_MODES = ("upconv", "upsample")
POOLS = ("avg", "max")
LEGACY_POOL = "max"  # what a UNetWrapper checkpoint without a "pool" argument was trained with


def check_pool(pool: object) -> str:
    """`pool` if it is one of POOLS, else a ValueError naming the value."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    return str(pool)


def with_pool(model_args: dict[str, Any]) -> dict[str, Any]:
    """UNetWrapper arguments as stored by a checkpoint, `pool` filled in for one written before it existed."""
    return model_args if "pool" in model_args else {**model_args, "pool": LEGACY_POOL}


class UNetConvBlock(nn.Module):
    """(conv 3x3 -> ReLU [-> BN]) twice; `block` indices 0/2/3/5 hold the weights when batch_norm."""

    def __init__(self, in_channels: int, out_channels: int, padding: bool, batch_norm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for layer_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(layer_in, out_channels, kernel_size=3, padding=int(padding)))
            layers.append(nn.ReLU())
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The central height x width window of x [B, C, H, W] (the bridge of an up block)."""
    top = (x.shape[2] - height) // 2
    left = (x.shape[3] - width) // 2
    return x[:, :, top : top + height, left : left + width]


class UNetUpBlock(nn.Module):
    """Double the resolution, concatenate the (cropped) skip connection, then a conv block."""

    def __init__(self, in_channels: int, out_channels: int, up_mode: str, padding: bool, batch_norm: bool) -> None:
        super().__init__()
        if up_mode == "upconv":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(mode="bilinear", scale_factor=2.0, align_corners=False),
                nn.Conv2d(in_channels, out_channels, kernel_size=1),
            )
        self.conv_block = UNetConvBlock(in_channels, out_channels, padding, batch_norm)

    def forward(self, x: torch.Tensor, bridge: torch.Tensor) -> torch.Tensor:
        up = self.up(x)  # (B, out, 2H, 2W)
        bridge = center_crop(bridge, up.shape[2], up.shape[3])
        return self.conv_block(torch.cat([up, bridge], dim=1))  # (B, out, 2H, 2W)


class UNet(nn.Module):
    """U-Net of `depth` levels; level k has 2**(wf + k) channels; `last` is a 1x1 conv to n_classes.

    Each level but the last halves the resolution with 2x2 pooling: `pool` "avg" (the book's)
    or "max".

    With padding=True the output has the input's H x W when both are multiples
    of 2**(depth - 1); with padding=False it shrinks (valid convolutions).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        depth: int = 5,
        wf: int = 6,
        padding: bool = False,
        batch_norm: bool = False,
        up_mode: str = "upconv",
        pool: str = "avg",
    ) -> None:
        super().__init__()
        self.pool = check_pool(pool)
        if up_mode not in UP_MODES:
            raise ValueError(f"up_mode must be one of {UP_MODES}, got {up_mode!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.down_path = nn.ModuleList()
        channels = in_channels
        for level in range(depth):
            self.down_path.append(UNetConvBlock(channels, 2 ** (wf + level), padding, batch_norm))
            channels = 2 ** (wf + level)
        self.up_path = nn.ModuleList()
        for level in reversed(range(depth - 1)):
            self.up_path.append(UNetUpBlock(channels, 2 ** (wf + level), up_mode, padding, batch_norm))
            channels = 2 ** (wf + level)
        self.last = nn.Conv2d(channels, n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bridges: list[torch.Tensor] = []
        n_down = len(self.down_path)
        for level, down in enumerate(self.down_path):
            x = down(x)  # (B, 2**(wf+level), H / 2**level, W / 2**level)
            if level != n_down - 1:
                bridges.append(x)
                x = F.avg_pool2d(x, 2) if self.pool == "avg" else F.max_pool2d(x, 2)
        for level, up in enumerate(self.up_path):
            x = up(x, bridges[-level - 1])
        return self.last(x)  # (B, n_classes, H, W)


class UNetWrapper(nn.Module):
    """Input batch norm -> U-Net -> sigmoid: [B, 7, H, W] clipped HU -> probability [B, 1, H, W].

    Any H x W works: the input is padded to a multiple of 2**(depth - 1) and the
    output cropped back. Padding replicates the edge pixels of the raw input
    (before the batch norm), split evenly between the two sides, extra pixel
    at the bottom / right; an image edge in a CT slice is air or table, which
    replication continues without inventing a new intensity. A size that is
    already a multiple (512 x 512) is not padded, exactly as the book runs it.
    """

    def __init__(
        self,
        in_channels: int = 7,
        n_classes: int = 1,
        depth: int = 3,
        wf: int = 4,
        padding: bool = True,
        batch_norm: bool = True,
        up_mode: str = "upconv",
        pool: str = "avg",
    ) -> None:
        super().__init__()
        if not padding:
            raise ValueError("UNetWrapper needs padding=True (its output keeps the input size)")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.depth = depth
        self.wf = wf
        self.padding = padding
        self.batch_norm = batch_norm
        self.up_mode = up_mode
        self.pool = check_pool(pool)
        self.size_multiple = 2 ** (depth - 1)
        self.input_batchnorm = nn.BatchNorm2d(in_channels)
        self.unet = UNet(in_channels, n_classes, depth, wf, padding, batch_norm, up_mode, self.pool)
        self.final = nn.Sigmoid()
        init_weights(self)

    def init_args(self) -> dict[str, Any]:
        """The constructor arguments, as checkpoints store them."""
        return {
            "in_channels": self.in_channels,
            "n_classes": self.n_classes,
            "depth": self.depth,
            "wf": self.wf,
            "padding": self.padding,
            "batch_norm": self.batch_norm,
            "up_mode": self.up_mode,
            "pool": self.pool,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError("UNetWrapper: input must be [B, in_channels, H, W]")
        height, width = x.shape[2], x.shape[3]
        pad_h = (self.size_multiple - height % self.size_multiple) % self.size_multiple
        pad_w = (self.size_multiple - width % self.size_multiple) % self.size_multiple
        top, left = pad_h // 2, pad_w // 2
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [left, pad_w - left, top, pad_h - top], mode="replicate")  # (B, 7, H', W')
        x = self.input_batchnorm(x)
        x = self.unet(x)  # (B, n_classes, H', W')
        x = x[:, :, top : top + height, left : left + width]  # (B, n_classes, H, W)
        return self.final(x)
