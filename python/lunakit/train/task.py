"""What the shared epoch loop asks of a training task (classify, segment, malignancy).

A task builds its datasets, model and optimizer from the TrainConfig, turns one batch
into a loss plus what its metrics need, and turns a pass's collected outputs into
metrics (reduced over the ranks). The loop (lunakit.train.loop) does everything else:
devices, DDP, epochs, checkpoints, resume, logging.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from lunakit.data.volumes import DataError
from lunakit.train.config import TrainConfig, TrainError
from lunakit.train.distributed import DistContext


class Accumulator:
    """Collects a pass's per-batch outputs; `result` reduces them over the ranks."""

    def add(self, outputs: Any) -> None:
        raise NotImplementedError

    def result(self, ctx: DistContext) -> dict[str, Any]:
        raise NotImplementedError


class Task:
    """Base of the three training tasks."""

    kind: str = ""  # checkpoint kind: cls | seg | mal

    def __init__(self, config: TrainConfig, ctx: DistContext):
        self.config = config
        self.ctx = ctx
        self.device = torch.device(ctx.device)

    # -- data --
    def build_datasets(
        self, cache: Path, candidates: list, train_uids: list[str], val_uids: list[str]
    ) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    def train_period(self) -> int:
        """Positions per balancing period of the training epoch (kept whole on each rank)."""
        return 1

    def val_batch_sampler(self, val_ds: Dataset, indices: list[int]) -> Sampler | None:
        """A batch sampler over this rank's validation indices, or None for plain batching."""
        return None

    # -- model --
    def build_model(
        self, model_args: dict[str, Any] | None = None, trainable: list[str] | None = None
    ) -> tuple[nn.Module, dict[str, Any]]:
        """A new model -> (model, info). Fresh or fine-tuned from config.finetune; with
        `model_args` (resume) the architecture is rebuilt as stored and `trainable` names the
        parameters that train. info holds model_args, trainable names and a note for the log."""
        raise NotImplementedError

    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        raise NotImplementedError

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move to the device (and the memory format the task computes fastest in)."""
        return model.to(self.device)

    # -- passes --
    def forward(self, model: nn.Module, inputs: torch.Tensor) -> Any:
        """model(inputs), under autocast with --amp (float16 on CUDA, bfloat16 on CPU). Only the
        model runs in the lower precision: augmentation (affine grids, blur), the outputs the
        losses and metrics read, and the losses themselves are float32."""
        dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16
        with torch.autocast(device_type=self.device.type, dtype=dtype, enabled=self.config.amp):
            out = model(inputs)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()

    def train_step(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, Any]:
        """(mean loss to backpropagate, outputs for the accumulator)."""
        raise NotImplementedError

    def val_step(self, model: nn.Module, batch: Any) -> Any:
        raise NotImplementedError

    def new_accumulator(self, split: str) -> Accumulator:
        raise NotImplementedError

    # -- pictures --
    def figures(self, run_dir: Path, epoch: int, val_result: dict[str, Any]) -> dict[str, Any]:
        """Write this validation's PNGs; returns {tag: matplotlib figure} for TensorBoard."""
        return {}


def dataset_or_error(what: str, build: Any) -> Any:
    """Call build(); a DataError names which split failed (e.g. no positives in validation)."""
    try:
        return build()
    except DataError as exc:
        raise DataError(f"{what}: {exc}") from None


SGD_LR = 0.001
SGD_LR_FINETUNE = 0.003  # the book's rate when starting from a trained model
SGD_MOMENTUM = 0.99
ADAM_LR = 0.001


def make_optimizer(config: TrainConfig, params: list[nn.Parameter], default: str) -> torch.optim.Optimizer:
    """config.optimizer (or the task's default) with config.lr (or the book's rate for it):
    SGD lr 0.001 (0.003 fine-tuning) momentum 0.99; Adam lr 0.001."""
    name = config.optimizer or default
    if name == "sgd":
        lr = config.lr if config.lr is not None else SGD_LR_FINETUNE if config.finetune else SGD_LR
        return torch.optim.SGD(params, lr=float(lr), momentum=SGD_MOMENTUM)
    return torch.optim.Adam(params, lr=float(config.lr if config.lr is not None else ADAM_LR))


def finetune_source(config: TrainConfig, accepted: tuple[str, ...]) -> tuple[nn.Module, dict[str, Any]]:
    """Load config.finetune, refusing a checkpoint of a kind this task cannot start from."""
    from lunakit.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(config.finetune, map_location="cpu")
    if meta["kind"] not in accepted:
        wanted = " or ".join(repr(k) for k in accepted)
        raise TrainError(
            f"{config.finetune}: holds a {meta['kind']!r} model; "
            f"--finetune for {config.task} needs a {wanted} checkpoint"
        )
    return model, meta
