"""`lunakit train classify|segment|malignancy ...`: the training apps (docs/training.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import lunakit.train as train_package
from lunakit.cli.prepcache import add_resample_option
from lunakit.train.config import BEST_METRICS, TASKS, TrainConfig, TrainError

_HELP = {
    "classify": "train the nodule classifier (LunaModel) on candidate crops; best.pt by F1",
    "segment": "train the segmentation U-Net on 7-slice stacks; best.pt by recall",
    "malignancy": "train the malignancy classifier (usually --finetune from a classifier); best.pt by ROC AUC",
}

# Options that may change when a run is resumed; every other option must match the stored run.
_RESUME_OVERRIDES = ("epochs", "num_workers")
_PATH_OPTIONS = ("data", "cache", "finetune", "hard_negatives")


def _add_options(p: argparse.ArgumentParser, task: str) -> None:
    # Every default is None so that an option given on the command line can be told apart
    # (a resumed run refuses options that contradict its stored config).
    p.add_argument("--data", type=Path, default=None, help="LUNA16 root: subset*/ scans and the CSV tables")
    add_resample_option(p)
    p.add_argument(
        "--cache", type=Path, default=None, help="volume cache folder (filled by prepcache when scans are missing)"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="run folder to create (best.pt, state.pt, metrics.jsonl, ...)"
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR after its last finished epoch (--epochs may raise the total)",
    )
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (default 1)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="samples per batch and process (default 32; 16 for segment)"
    )
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader worker processes (default 0)")
    if task != "segment":
        p.add_argument(
            "--balanced",
            type=int,
            default=None,
            metavar="R",
            help="one positive per R negatives in each training epoch (default 1; 0 = unbalanced)",
        )
    p.add_argument(
        "--augment",
        default=None,
        metavar="LIST",
        help="augmentations, from flip,offset,scale,rotate,noise,zoom,blur,contrast,shift "
        "(strength as offset=0.1; default none)",
    )
    p.add_argument(
        "--epoch-size",
        type=int,
        default=None,
        metavar="N",
        help="training samples per epoch (default: the dataset's length)",
    )
    p.add_argument("--val-stride", type=int, default=None, help="every Nth series validates (default 10)")
    p.add_argument(
        "--val-every", type=int, default=None, help="validate every N epochs (default 1; the last epoch always)"
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: SGD 0.001, 0.003 fine-tuning; Adam 0.001 for segment)",
    )
    p.add_argument(
        "--optimizer",
        choices=("sgd", "adam"),
        default=None,
        help="default " + ("adam (the book's)" if task == "segment" else "sgd, momentum 0.99 (the book's)"),
    )
    p.add_argument(
        "--finetune",
        type=Path,
        default=None,
        metavar="CKPT",
        help="start from this lunakit checkpoint ("
        + ("a seg model" if task == "segment" else "a cls model" if task == "classify" else "a cls or mal model")
        + ")",
    )
    if task != "segment":
        p.add_argument(
            "--finetune-depth",
            type=int,
            default=None,
            metavar="{1,...,6}",
            help="blocks that train when fine-tuning: 1 head only, 2 head + block4, ... "
            f"(default {1 if task == 'malignancy' else 6})",
        )
        p.add_argument(
            "--conv-channels",
            type=int,
            default=None,
            help="channels of the first LunaModel block (default 8, the book's)",
        )
    if task == "segment":
        p.add_argument(
            "--fn-weight",
            type=float,
            default=None,
            help="weight of the false-negative Dice term of the loss (default 8, the book's)",
        )
        p.add_argument(
            "--negatives",
            type=float,
            default=None,
            metavar="FRACTION",
            help="fraction of training windows centered on non-nodule candidates, so the U-Net "
            "also learns what is not a nodule; candidates on an irrelevant finding of "
            "annotations_excluded.csv are left out (default 0, the book's: nodule windows only)",
        )
        p.add_argument(
            "--pool",
            default=None,
            metavar="{avg,max}",
            help="the U-Net's 2x2 downsampling: avg (default, the book's) or max",
        )
        p.add_argument(
            "--bce-weight",
            type=float,
            default=None,
            help="weight of a per-pixel cross-entropy term added to the Dice loss, which "
            "penalizes marks in windows without a nodule (default 0, the book's)",
        )
    if task == "classify":
        p.add_argument(
            "--hard-negatives",
            type=Path,
            default=None,
            metavar="FILE",
            help="a candidates table of class-0 rows (lunakit mine-negatives: a bundle's own false "
            "positives) whose rows join the negatives",
        )
    if task == "malignancy":
        p.add_argument(
            "--include-non-nodules",
            action="store_true",
            default=None,
            help="non-nodule candidates join the benign class in training",
        )
    choices = BEST_METRICS[task]
    p.add_argument(
        "--best-metric",
        default=None,
        metavar="{" + ",".join(choices) + "}",
        help=f"validation metric that picks best.pt (default {choices[0]}, the book's)",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=None,
        metavar="DECAY",
        help="validate and save an exponential moving average of the weights over the steps, "
        "with this decay per step, e.g. 0.999 (default 0: the raw weights, the book's way)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default cpu")
    p.add_argument(
        "--amp", action="store_true", default=None, help="automatic mixed precision (float16 on CUDA, bfloat16 on CPU)"
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument(
        "--deterministic", action="store_true", default=None, help="deterministic algorithms only (slower on GPU)"
    )
    p.add_argument(
        "--no-prepcache",
        dest="prepcache",
        action="store_false",
        default=None,
        help="fail instead of filling a cache that lacks scans",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """(config, resume) from parsed arguments."""
    task = args.train_task
    given = {
        name: getattr(args, name)
        for name in (
            "data",
            "cache",
            "out",
            "epochs",
            "batch_size",
            "num_workers",
            "balanced",
            "augment",
            "finetune",
            "finetune_depth",
            "device",
            "amp",
            "seed",
            "lr",
            "optimizer",
            "epoch_size",
            "val_stride",
            "val_every",
            "conv_channels",
            "include_non_nodules",
            "fn_weight",
            "negatives",
            "bce_weight",
            "pool",
            "best_metric",
            "deterministic",
            "prepcache",
            "resample_mm",
            "hard_negatives",
            "ema",
        )
        if getattr(args, name, None) is not None
    }
    for name in ("data", "cache", "out", "finetune", "hard_negatives"):
        if name in given:
            given[name] = str(given[name])
    if "balanced" in given:
        if given["balanced"] < 0:
            raise TrainError(f"--balanced must be >= 0 (0 = unbalanced), got {given['balanced']}")
        given["balanced"] = given["balanced"] or None
    if args.resume is not None:
        return _resumed_config(task, Path(args.resume), given), True
    missing = [f"--{name}" for name in ("data", "cache", "out") if name not in given]
    if missing:
        raise TrainError(f"train {task}: {' and '.join(missing)} required (or --resume RUN_DIR)")
    defaults: dict[str, Any] = {"task": task}
    if task == "segment":
        defaults.update(balanced=None, batch_size=16)
    return TrainConfig(**{**defaults, **given}), False


def _resumed_config(task: str, run_dir: Path, given: dict[str, Any]) -> TrainConfig:
    from lunakit.train.loop import resume_config

    if "out" in given and Path(given["out"]).resolve() != run_dir.resolve():
        raise TrainError(f"--out {given['out']} differs from --resume {run_dir}: a resumed run stays in its folder")
    overrides = {k: given[k] for k in _RESUME_OVERRIDES if k in given}
    config = resume_config(run_dir, overrides)
    if config.task != task:
        raise TrainError(f"{run_dir}: holds a {config.task} run, not {task}")
    stored = config.to_dict()
    for name, value in given.items():
        if name in _RESUME_OVERRIDES or name == "out":
            continue
        same = (
            Path(stored[name]).resolve() == Path(value).resolve()
            if name in _PATH_OPTIONS and stored[name] is not None
            else stored[name] == value
        )
        if not same:
            flag = "--" + name.replace("_", "-")
            raise TrainError(
                f"{flag} {value!r} differs from the resumed run's {stored[name]!r}: "
                "a resumed run keeps its configuration (only --epochs and --num-workers may change)"
            )
    return config


def _run(args: argparse.Namespace) -> int:
    from lunakit.train.loop import Reporter, train

    config, resume = config_from_args(args)
    reporter = Reporter(
        note=lambda line: print(line, file=sys.stderr, flush=True), result=lambda line: print(line, flush=True)
    )
    train(config, resume=resume, progress=not args.no_progress, reporter=reporter)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the nodule classifier, the segmentation U-Net or the malignancy model",
        description=train_package.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="train_task", required=True, metavar="{classify,segment,malignancy}")
    for task in TASKS:
        q = sub.add_parser(task, help=_HELP[task], description=_HELP[task])
        _add_options(q, task)
        q.set_defaults(func=_run, train_task=task)
