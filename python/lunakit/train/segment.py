"""`lunakit train segment`: the U-Net that marks nodule pixels on 7-slice stacks.

As the book trains it: 64 x 64 windows of 7-slice stacks around nodules (label = the
positive mask of the center slice), optional augmentation (the same random affine map
moves input and label; noise touches the input only), loss Dice + 8 x false-negative
Dice, Adam at lr 0.001. Validation runs on whole slices holding mask voxels; metrics are
per-pixel counts at probability 0.5 and best.pt is kept by recall.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lunakit.data import SegmentationTrainDataset, SegmentationValDataset, parse_augmentations
from lunakit.data.augment import add_noise, apply_affine, augment_intensity, random_affine_matrices
from lunakit.io.luna import load_excluded
from lunakit.models.unet import UNetWrapper, with_pool
from lunakit.train.config import TrainConfig, TrainError
from lunakit.train.distributed import DistContext, GroupedBatchSampler, all_reduce_sums
from lunakit.train.figures import overlay_figure, save_figure
from lunakit.train.losses import segmentation_loss
from lunakit.train.metrics import segmentation_metrics
from lunakit.train.task import Accumulator, Task, dataset_or_error, finetune_source, make_optimizer

THRESHOLD = 0.5
OVERLAY_PANELS = 6


class PixelAccumulator(Accumulator):
    """Summed per-pixel counts and losses, plus a few slices kept for the overlay picture."""

    def __init__(self, keep_panels: int = 0) -> None:
        self.sums = {"tp": 0.0, "fn": 0.0, "fp": 0.0, "loss_sum": 0.0, "count": 0.0}
        self.keep_panels = keep_panels
        self.panels: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]] = []

    def add(self, outputs: Any) -> None:
        stacks, labels, probs, losses, captions = outputs
        predicted = probs.detach() > THRESHOLD
        labels = labels.bool()
        self.sums["tp"] += float((predicted & labels).sum())
        self.sums["fn"] += float((~predicted & labels).sum())
        self.sums["fp"] += float((predicted & ~labels).sum())
        self.sums["loss_sum"] += float(losses.detach().float().sum())
        self.sums["count"] += float(losses.numel())
        if len(self.panels) < self.keep_panels and captions is not None:
            center = stacks.shape[1] // 2
            self.panels.append(
                (
                    stacks[0, center].detach().float().cpu().numpy(),
                    labels[0, 0].cpu().numpy(),
                    probs[0, 0].detach().float().cpu().numpy(),
                    captions[0],
                )
            )

    def result(self, ctx: DistContext) -> dict[str, Any]:
        sums = all_reduce_sums(self.sums, ctx)
        metrics = segmentation_metrics(sums["tp"], sums["fn"], sums["fp"], sums["loss_sum"], sums["count"])
        return {"metrics": metrics, "panels": self.panels}


class SegmentTask(Task):
    kind = "seg"

    def __init__(self, config: TrainConfig, ctx: DistContext):
        super().__init__(config, ctx)
        self.augment = parse_augmentations(config.augment or None)

    def build_datasets(
        self, cache: Path, candidates: list, train_uids: list[str], val_uids: list[str]
    ) -> tuple[Any, Any]:
        cfg = self.config
        train = dataset_or_error(
            f"training set ({len(train_uids)} series)",
            lambda: SegmentationTrainDataset(
                cache,
                candidates,
                train_uids,
                epoch_size=cfg.epoch_size,
                negatives=cfg.negatives,
                irrelevant=load_excluded(cfg.data) if cfg.negatives else (),
                seed=cfg.seed,
                shuffle=True,
            ),
        )
        val = dataset_or_error(
            f"validation set ({len(val_uids)} series, every --val-stride {cfg.val_stride}th)",
            lambda: SegmentationValDataset(cache, candidates, val_uids),
        )
        return train, val

    def val_batch_sampler(self, val_ds: Any, indices: list[int]) -> Any:
        """Slices of one scan per batch (scans may differ in size): the validation set lists
        each series' positive slices in turn, in the order of val_ds.series_uids."""
        counts = [len(val_ds.masks[uid].positive_slices()) for uid in val_ds.series_uids]
        groups = np.repeat(np.arange(len(counts)), counts)
        if len(groups) != len(val_ds):  # layout not as expected: one slice per batch is always safe
            groups = np.arange(len(val_ds))
        return GroupedBatchSampler(indices, groups.tolist(), self.config.batch_size)

    def build_model(
        self, model_args: dict[str, Any] | None = None, trainable: list[str] | None = None
    ) -> tuple[nn.Module, dict[str, Any]]:
        cfg = self.config
        note = "fresh UNetWrapper"
        if model_args is not None:
            model = UNetWrapper(**with_pool(model_args))
            note = "UNetWrapper of the resumed run"
        elif cfg.finetune is not None:
            model, _ = finetune_source(cfg, ("seg",))
            if model.pool != cfg.pool:
                raise TrainError(
                    f"--pool {cfg.pool}: {cfg.finetune} was trained with {model.pool} pooling "
                    f"(pass --pool {model.pool} to fine-tune it)"
                )
            note = f"fine-tuned from {cfg.finetune} (seg), all layers"
        else:
            model = UNetWrapper(
                in_channels=7,
                n_classes=1,
                depth=3,
                wf=4,
                padding=True,
                batch_norm=True,
                up_mode="upconv",
                pool=cfg.pool,
            )
        model.train()
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        return model, {"model_args": model.init_args(), "trainable": names, "note": note}

    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return make_optimizer(self.config, params, default="adam")

    def _inputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        stacks = batch[0].to(self.device, non_blocking=True)  # (B, 7, H, W) HU
        labels = batch[1].to(self.device, non_blocking=True)  # (B, 1, H, W) bool
        return stacks, labels

    def train_step(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, Any]:
        stacks, labels = self._inputs(batch)
        if self.augment.spatial:
            theta = random_affine_matrices(stacks.shape[0], tuple(stacks.shape[2:]), self.augment, generator)
            stacks = apply_affine(stacks, theta)
            labels = apply_affine(labels.float(), theta) > 0.5
        if self.augment.intensity:
            stacks = augment_intensity(stacks, self.augment, generator)
        if self.augment.noise > 0:
            stacks = add_noise(stacks, self.augment.noise, generator)
        probs = self.forward(model, stacks)  # (B, 1, H, W)
        losses = segmentation_loss(probs, labels, self.config.fn_weight, self.config.bce_weight)  # (B,)
        return losses.mean(), (stacks, labels, probs, losses, None)

    def val_step(self, model: nn.Module, batch: Any) -> Any:
        stacks, labels = self._inputs(batch)
        probs = self.forward(model, stacks)
        uids, slices = batch[2], batch[3]
        caption = [f"{uid[-12:]} slice {int(i)}" for uid, i in zip(uids, slices)]
        return (
            stacks,
            labels,
            probs,
            segmentation_loss(probs, labels, self.config.fn_weight, self.config.bce_weight),
            caption,
        )

    def new_accumulator(self, split: str) -> Accumulator:
        keep = OVERLAY_PANELS if split == "val" and self.ctx.is_main else 0
        return PixelAccumulator(keep)

    def figures(self, run_dir: Path, epoch: int, val_result: dict[str, Any]) -> dict[str, Any]:
        panels = val_result.get("panels") or []
        if not panels:
            return {}
        fig = overlay_figure(panels, THRESHOLD)
        save_figure(fig, run_dir / "figures" / f"overlay_epoch{epoch:03d}.png")
        return {"val/overlay": fig}
