"""`lunakit train classify`: the nodule classifier (LunaModel) on candidate crops.

As the book trains it: balanced epochs (one nodule per `balanced` non-nodules), optional
augmentation of the crops, cross-entropy, SGD with lr 0.001 and momentum 0.99. The
validation set is every candidate of the validation series, once, unbalanced; best.pt
is kept by F1 at threshold 0.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lunakit.data import ClassificationDataset, augment_batch, parse_augmentations
from lunakit.models.classifier import LunaModel, malignancy_from_classifier
from lunakit.train.config import TrainConfig
from lunakit.train.distributed import DistContext
from lunakit.train.figures import roc_figure, save_figure
from lunakit.train.losses import classification_loss
from lunakit.train.metrics import classification_metrics, roc_curve
from lunakit.train.task import Accumulator, Task, dataset_or_error, finetune_source, make_optimizer


class ScoreAccumulator(Accumulator):
    """Per-sample labels, positive-class probabilities and losses; gathered over the ranks."""

    def __init__(self) -> None:
        self.labels: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.losses: list[np.ndarray] = []

    def add(self, outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        labels, scores, losses = outputs
        self.labels.append(labels.detach().cpu().numpy().astype(np.int64))
        self.scores.append(scores.detach().float().cpu().numpy().astype(np.float64))
        self.losses.append(losses.detach().float().cpu().numpy().astype(np.float64))

    def result(self, ctx: DistContext) -> dict[str, Any]:
        from lunakit.train.distributed import gather_arrays

        def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

        arrays = gather_arrays(
            {
                "labels": cat(self.labels, np.int64),
                "scores": cat(self.scores, np.float64),
                "losses": cat(self.losses, np.float64),
            },
            ctx,
        )
        metrics = classification_metrics(arrays["labels"], arrays["scores"], arrays["losses"])
        return {"metrics": metrics, "labels": arrays["labels"], "scores": arrays["scores"]}


class ClassifyTask(Task):
    kind = "cls"
    finetune_kinds: tuple[str, ...] = ("cls",)
    title = "nodule classifier"

    def __init__(self, config: TrainConfig, ctx: DistContext):
        super().__init__(config, ctx)
        self.augment = parse_augmentations(config.augment or None)

    # -- data --
    def make_dataset(self, cache: Path, candidates: list, series: list[str], training: bool) -> ClassificationDataset:
        cfg = self.config
        if training:
            return ClassificationDataset(
                cache, candidates, series, ratio=cfg.balanced, epoch_size=cfg.epoch_size, seed=cfg.seed, shuffle=True
            )
        return ClassificationDataset(cache, candidates, series, ratio=None, shuffle=False)

    def build_datasets(
        self, cache: Path, candidates: list, train_uids: list[str], val_uids: list[str]
    ) -> tuple[Any, Any]:
        train = dataset_or_error(
            f"training set ({len(train_uids)} series)", lambda: self.make_dataset(cache, candidates, train_uids, True)
        )
        val = dataset_or_error(
            f"validation set ({len(val_uids)} series, every --val-stride {self.config.val_stride}th)",
            lambda: self.make_dataset(cache, candidates, val_uids, False),
        )
        return train, val

    def train_period(self) -> int:
        return self.config.balanced + 1 if self.config.balanced else 1

    # -- model --
    def build_model(
        self, model_args: dict[str, Any] | None = None, trainable: list[str] | None = None
    ) -> tuple[nn.Module, dict[str, Any]]:
        cfg = self.config
        note = "fresh LunaModel"
        if model_args is not None:  # resume: the stored architecture and trainable set
            model = LunaModel(**model_args)
            note = "LunaModel of the resumed run"
        elif cfg.finetune is not None:
            source, meta = finetune_source(cfg, self.finetune_kinds)
            depth = cfg.finetune_depth if cfg.finetune_depth is not None else self.default_finetune_depth()
            reset_head = meta["kind"] != self.kind  # a head trained for other classes starts afresh
            model, names = malignancy_from_classifier(source, finetune_depth=depth, reset_head=reset_head)
            trainable = names
            note = (
                f"fine-tuned from {cfg.finetune} ({meta['kind']}), depth {depth}, "
                f"{'new' if reset_head else 'kept'} head"
            )
        else:
            model = LunaModel(conv_channels=cfg.conv_channels)
        if trainable is not None:
            keep = set(trainable)
            for name, param in model.named_parameters():
                param.requires_grad_(name in keep)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        return model, {"model_args": model.init_args(), "trainable": names, "note": note}

    def default_finetune_depth(self) -> int:
        return 6  # classify: continue training every layer

    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return make_optimizer(self.config, params, default="sgd")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        # channels_last_3d: oneDNN's 3D convolution backward is ~10x faster in it on CPU.
        return model.to(self.device, memory_format=torch.channels_last_3d)

    # -- passes --
    def _inputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        crops, labels = batch[0], batch[1]
        crops = crops.to(self.device, non_blocking=True)  # (B, 1, 32, 48, 48) HU
        labels = labels.to(self.device, non_blocking=True)  # (B,)
        return crops, labels

    def train_step(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, Any]:
        crops, labels = self._inputs(batch)
        if self.augment.enabled:
            crops = augment_batch(crops, self.augment, generator=generator)
        logits, probs = self.forward(model, crops.contiguous(memory_format=torch.channels_last_3d))
        losses = classification_loss(logits, labels)  # (B,)
        return losses.mean(), (labels, probs[:, 1], losses)

    def val_step(self, model: nn.Module, batch: Any) -> Any:
        crops, labels = self._inputs(batch)
        logits, probs = self.forward(model, crops.contiguous(memory_format=torch.channels_last_3d))
        return labels, probs[:, 1], classification_loss(logits, labels)

    def new_accumulator(self, split: str) -> Accumulator:
        return ScoreAccumulator()

    # -- pictures --
    def figures(self, run_dir: Path, epoch: int, val_result: dict[str, Any]) -> dict[str, Any]:
        labels, scores = val_result["labels"], val_result["scores"]
        auc = val_result["metrics"]["auc"]
        if labels.size == 0 or not np.isfinite(auc):
            return {}
        fpr, tpr, _ = roc_curve(labels, scores)
        fig = roc_figure(fpr, tpr, auc, f"{self.title}, validation, epoch {epoch}")
        save_figure(fig, run_dir / "figures" / f"roc_epoch{epoch:03d}.png")
        return {"val/roc": fig}
