"""The configuration of one training run, stored whole in every checkpoint and resume state."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lunakit.errors import LunakitError
from lunakit.models.unet import LEGACY_POOL, check_pool

TASKS = ("classify", "segment", "malignancy")
"""`lunakit train` subcommands; each trains one model kind."""

TASK_KIND = {"classify": "cls", "segment": "seg", "malignancy": "mal"}
"""Checkpoint kind (lunakit.models.checkpoint) written by each task."""

DEVICES = ("cpu", "cuda")

OPTIMIZERS = ("sgd", "adam")

BEST_METRICS = {
    "classify": ("f1", "auc", "recall", "precision", "correct"),
    "malignancy": ("auc", "f1", "recall", "precision", "correct"),
    "segment": ("recall", "f1", "precision"),
}
"""Validation metrics (higher is better) that may pick best.pt; the first is the book's choice."""


class TrainError(LunakitError):
    """A training run cannot start or continue: bad option, missing data, unusable checkpoint."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a run computes (not where its progress bar goes).

    Paths are stored as strings. `balanced` is the book's positive:negative ratio 1:N
    (None = every candidate once per epoch, unbalanced). `optimizer` None is the book's
    choice for the task (SGD for the classifiers, Adam for segmentation); `lr` None its
    default rate (SGD 0.001, 0.003 when fine-tuning; Adam 0.001).
    `epoch_size` None means the dataset's natural length. `fn_weight` is the weight of the
    false-negative Dice term of the segmentation loss (the book's 8). `negatives` is the
    fraction of segmentation windows centered on non-nodule candidates (the book's 0: nodule
    windows only); `bce_weight` the weight of a per-pixel cross-entropy term added to that
    loss (the book's 0). `pool` is the U-Net's downsampling, "avg" (the book's) or "max"
    (what segment runs used before the choice existed). `best_metric` None
    keeps best.pt by the book's metric for the task (BEST_METRICS). `augment` is a spec for
    lunakit.data.parse_augmentations ("" = none). `hard_negatives` names a candidates table
    (`lunakit mine-negatives`) whose class-0 rows join the classifier's negatives. `ema` is the
    decay of the weight average that validation and checkpoints use (lunakit.train.average;
    0 = the raw weights, the book's way).
    """

    task: str
    data: str
    cache: str
    out: str
    epochs: int = 1
    batch_size: int = 32
    num_workers: int = 0
    balanced: int | None = 1
    augment: str = ""
    finetune: str | None = None
    finetune_depth: int | None = None
    device: str = "cpu"
    amp: bool = False
    seed: int = 0
    lr: float | None = None
    optimizer: str | None = None
    epoch_size: int | None = None
    val_stride: int = 10
    val_every: int = 1
    conv_channels: int = 8
    include_non_nodules: bool = False
    fn_weight: float = 8.0
    negatives: float = 0.0
    bce_weight: float = 0.0
    pool: str = "avg"
    best_metric: str | None = None
    deterministic: bool = False
    prepcache: bool = True
    resample_mm: tuple[float, float, float] | None = None  # scans resampled to it (mm, I R C) first
    hard_negatives: str | None = None
    ema: float = 0.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise TrainError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.device not in DEVICES:
            raise TrainError(f"--device must be cpu or cuda, got {self.device!r}")
        _positive("--epochs", self.epochs)
        _positive("--batch-size", self.batch_size)
        _positive("--val-stride", self.val_stride)
        _positive("--val-every", self.val_every)
        _positive("--conv-channels", self.conv_channels)
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise TrainError(f"--num-workers must be an integer >= 0, got {self.num_workers!r}")
        if self.balanced is not None:
            _positive("--balanced", self.balanced)
        if self.epoch_size is not None:
            _positive("--epoch-size", self.epoch_size)
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and 0 < self.lr < float("inf")):
            raise TrainError(f"--lr must be a positive number, got {self.lr!r}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise TrainError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise TrainError(f"--seed must be an integer in 0..2**63-1, got {self.seed!r}")
        if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or not 0 <= self.ema < 1:
            raise TrainError(f"--ema must be a decay in [0, 1) (0 = off), got {self.ema!r}")
        if self.hard_negatives is not None and self.task != "classify":
            raise TrainError(f"--hard-negatives applies to classify, not {self.task}")
        if self.finetune_depth is not None:
            if self.task == "segment":
                raise TrainError("--finetune-depth applies to classify and malignancy, not segment")
            if self.finetune is None:
                raise TrainError("--finetune-depth needs --finetune CHECKPOINT")
            if self.finetune_depth not in (1, 2, 3, 4, 5, 6):
                raise TrainError(
                    f"--finetune-depth must be 1..6 (1: head only, 2: head + block4, ...), got {self.finetune_depth!r}"
                )
        if (
            isinstance(self.fn_weight, bool)
            or not isinstance(self.fn_weight, (int, float))
            or not 0 <= self.fn_weight < float("inf")
        ):
            raise TrainError(f"--fn-weight must be a number >= 0, got {self.fn_weight!r}")
        if self.fn_weight != 8.0 and self.task != "segment":
            raise TrainError("--fn-weight applies to segment only")
        if (
            isinstance(self.negatives, bool)
            or not isinstance(self.negatives, (int, float))
            or not 0 <= self.negatives < 1
        ):
            raise TrainError(f"--negatives must be a fraction in [0, 1), got {self.negatives!r}")
        if self.negatives and self.task != "segment":
            raise TrainError("--negatives applies to segment only")
        if (
            isinstance(self.bce_weight, bool)
            or not isinstance(self.bce_weight, (int, float))
            or not 0 <= self.bce_weight < float("inf")
        ):
            raise TrainError(f"--bce-weight must be a number >= 0, got {self.bce_weight!r}")
        if self.bce_weight and self.task != "segment":
            raise TrainError("--bce-weight applies to segment only")
        try:
            check_pool(self.pool)
        except ValueError as exc:
            raise TrainError(f"--{exc}") from None
        if self.pool != "avg" and self.task != "segment":
            raise TrainError("--pool applies to segment only")
        if self.best_metric is not None and self.best_metric not in BEST_METRICS[self.task]:
            raise TrainError(
                f"--best-metric for {self.task} must be one of {', '.join(BEST_METRICS[self.task])}, "
                f"got {self.best_metric!r}"
            )
        if self.include_non_nodules and self.task != "malignancy":
            raise TrainError("--include-non-nodules applies to malignancy only")
        if self.resample_mm is not None:
            from lunakit.pipeline.options import AnalysisError, checked_options

            try:
                spacing = checked_options({"resample_mm": list(self.resample_mm)})["resample_mm"]
            except (AnalysisError, TypeError) as exc:
                raise TrainError(f"--resample-mm: {exc}") from None
            object.__setattr__(self, "resample_mm", tuple(spacing))

    @property
    def selection_metric(self) -> str:
        """The validation metric that picks best.pt."""
        return self.best_metric or BEST_METRICS[self.task][0]

    @property
    def kind(self) -> str:
        """The checkpoint kind this run writes (cls, seg, mal)."""
        return TASK_KIND[self.task]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Rebuild from a stored dict; unknown keys are refused, missing ones take the defaults."""
        if not isinstance(values, dict):
            raise TrainError(f"{source}: the stored training config is not a dict")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainError(f"{source}: unknown training config entries {', '.join(unknown)}")
        if values.get("task") == "segment" and "pool" not in values:
            values = {**values, "pool": LEGACY_POOL}  # a run from before the choice: max pooling
        try:
            return cls(**values)
        except TypeError as exc:
            raise TrainError(f"{source}: incomplete training config ({exc})") from None


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TrainError(f"{name} must be an integer >= 1, got {value!r}")
