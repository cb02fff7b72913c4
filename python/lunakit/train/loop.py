"""The epoch loop shared by the training apps: data, devices, DDP, checkpoints, exact resume.

A run directory holds:

    best.pt        lunakit checkpoint of the best validation so far (lunakit.models.checkpoint;
                   loads with load_checkpoint, exports with `lunakit export`)
    state.pt       resume state after the last finished epoch (plain types and tensors only:
                   config, epoch, model and optimizer state, best so far, RNG states)
    metrics.jsonl  one JSON object per epoch: {"epoch", "train": {...}, "val": {...} or null,
                   "best": {...}, "time_s"}
    tensorboard/   TensorBoard scalars and figures (when the tensorboard package is installed)
    figures/       ROC curves (classifiers) and slice overlays (segmentation), one PNG per validation

Exact resume. Every epoch reseeds python, numpy and torch (and the augmentation generator)
from (seed, epoch, rank), and the datasets derive their order from (seed, epoch); so
epoch k + 1 computes the same thing whether the process ran epochs 1..k before it or
loaded their result from state.pt. The RNG states are stored and restored as well, for
anything that draws outside that scheme. An interrupted epoch is simply run again.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lunakit.io.files import atomic_write
from lunakit.models.checkpoint import CheckpointError, cpu_state_dict, plain, read_torch_file, save_checkpoint
from lunakit.train import distributed as dist_util
from lunakit.train.average import WeightAverage
from lunakit.train.config import TrainConfig, TrainError
from lunakit.train.distributed import DistContext, EvalShardSampler, TrainShardSampler
from lunakit.train.task import Task

STATE_FORMAT = "lunakit-train-state"
STATE_VERSION = 1
STATE_FILE = "state.pt"
BEST_FILE = "best.pt"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    """What a finished run leaves in memory (the files are in run_dir)."""

    run_dir: Path
    model: nn.Module
    history: list[dict[str, Any]]
    best: dict[str, Any]


def make_task(config: TrainConfig, ctx: DistContext) -> Task:
    if config.task == "classify":
        from lunakit.train.classify import ClassifyTask

        return ClassifyTask(config, ctx)
    if config.task == "malignancy":
        from lunakit.train.malignancy import MalignancyTask

        return MalignancyTask(config, ctx)
    from lunakit.train.segment import SegmentTask

    return SegmentTask(config, ctx)


# ---------------------------------------------------------------------------------------------
# Seeds and RNG state


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 63-bit seed for one (run seed, epoch, rank)."""
    return int(
        np.random.SeedSequence([seed, epoch, rank])
        .generate_state(2, dtype=np.uint32)
        .astype(np.uint64)
        .dot(np.array([1 << 32, 1], dtype=np.uint64))
        & np.uint64((1 << 63) - 1)
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global RNG states as plain types and tensors."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": [int(v) for v in internal], "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


# ---------------------------------------------------------------------------------------------
# Run folder, cache


def check_run_dir(out: Path, resume: bool) -> None:
    """A resumed run needs its state; a new run needs a folder that holds no other run."""
    if resume:
        if not (out / STATE_FILE).is_file():
            raise TrainError(f"{out}: no {STATE_FILE} to resume from")
        return
    if out.exists() and not out.is_dir():
        raise TrainError(f"{out}: exists and is not a folder")
    if (out / STATE_FILE).exists() or (out / METRICS_FILE).exists():
        raise TrainError(
            f"{out}: already holds a training run (continue it with --resume {out}, or pick another --out)"
        )


def make_run_dir(out: Path) -> None:
    """Created only once the data and model are ready, so a run refused for bad input leaves nothing."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainError(f"{out}: cannot create the run folder ({exc.strerror or exc})") from None


@dataclass(frozen=True)
class Reporter:
    """Where the loop's lines go. Notes say what the run does or lacks; results are each epoch's
    summary and the best epoch. The default drops both: `lunakit train` prints notes to stderr and
    results to stdout (library code never prints)."""

    note: Callable[[str], None] = lambda line: None
    result: Callable[[str], None] = lambda line: None


def ensure_cache(config: TrainConfig, progress: bool, reporter: Reporter = Reporter()) -> None:
    """Fill the volume cache from the LUNA16 root when scans are missing (run on rank 0 only)."""
    from lunakit.io.cache import CacheError, VolumeCache, prepcache
    from lunakit.io.luna import find_scans

    data, cache_dir = Path(config.data), Path(config.cache)
    scans = find_scans(data)  # LunakitError for a missing root or one without scans
    if cache_dir.exists() and not cache_dir.is_dir():
        raise TrainError(f"{cache_dir}: cache path exists and is not a folder")
    spacing = "" if config.resample_mm is None else " --resample-mm " + ",".join(f"{v:g}" for v in config.resample_mm)
    prepcache_command = f"lunakit prepcache --luna-root {data} --cache {cache_dir}{spacing}"
    if not cache_dir.is_dir() and not config.prepcache:
        raise TrainError(
            f"{cache_dir}: cache folder not found (run `{prepcache_command}`, or leave out --no-prepcache)"
        )
    cache = VolumeCache(cache_dir)
    missing = [uid for uid, path in scans.items() if not cache.is_current(uid, path, config.resample_mm)]
    if missing and not config.prepcache:
        raise TrainError(
            f"{cache_dir}: {len(missing)} of the {len(scans)} scans of {data} are not cached"
            f"{' at that spacing' if spacing else ''} (run `{prepcache_command}`, or leave out --no-prepcache)"
        )
    if missing:
        reporter.note(f"train: caching {len(missing)} of {len(scans)} scans into {cache_dir}")
        stats = prepcache(data, cache_dir, progress=progress, resample_mm=config.resample_mm)
        if stats.failed:
            uid, error = stats.failed[0]
            raise CacheError(f"prepcache failed for {len(stats.failed)} scans, e.g. {error}")


# ---------------------------------------------------------------------------------------------
# Logging


def _epoch_of(line: str) -> float:
    """The epoch of a metrics.jsonl line; infinity for a blank or cut-off line (dropped on resume)."""
    try:
        record = json.loads(line)
        return float(record["epoch"])
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricsLog:
    """metrics.jsonl (always) and TensorBoard (when installed), written by rank 0 only."""

    def __init__(self, run_dir: Path, start_epoch: int, enabled: bool, resume: bool, note: Callable[[str], None]):
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        if resume and self.path.exists():  # drop lines of epochs that did not finish with a state
            kept = [line for line in self.path.read_text().splitlines() if _epoch_of(line) < start_epoch]
            self.path.write_text("".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            note(
                "train: the tensorboard package is not installed; metrics go to metrics.jsonl only (pip install tensorboard)"
            )
            return
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_epoch if resume else None)

    def write(self, record: dict[str, Any], figures: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(_finite_or_null(record), allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.writer is not None:
            epoch = record["epoch"]
            for split in ("train", "val"):
                for key, value in (record.get(split) or {}).items():
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        self.writer.add_scalar(f"{split}/{key}", value, epoch)
            for tag, fig in figures.items():
                self.writer.add_figure(tag, fig, epoch, close=False)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _finite_or_null(value: Any) -> Any:
    """NaN / infinity (e.g. the loss of a class absent from a pass) as JSON null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _summary_line(record: dict[str, Any], task: Task, epochs: int, eta_s: float) -> str:
    def fmt(metrics: dict[str, Any] | None, keys: tuple[str, ...]) -> str:
        if not metrics:
            return ""
        return " ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics and isinstance(metrics[k], float))

    keys = ("loss", "precision", "recall", "f1") + (("auc",) if task.kind != "seg" else ())
    text = f"epoch {record['epoch']}/{epochs} train: {fmt(record['train'], ('loss',))}"
    if record["val"] is not None:
        text += f" | val: {fmt(record['val'], keys)}"
    text += f" | {record['time_s']:.0f}s"
    if eta_s >= 1:
        text += f", about {_duration(eta_s)} left"
    return text


# ---------------------------------------------------------------------------------------------
# Passes


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit="batch", disable=not enabled, file=sys.stderr, leave=False, dynamic_ncols=True
    )


def run_epoch(
    task: Task,
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    generator: torch.Generator,
    desc: str,
    progress: bool,
    average: WeightAverage | None = None,
) -> dict[str, Any]:
    model.train()
    acc = task.new_accumulator("train")
    bar = _progress(len(loader), desc, progress)
    try:
        for batch in loader:
            loss, outputs = task.train_step(model, batch, generator)
            if not bool(torch.isfinite(loss.detach())):
                raise TrainError(
                    f"{desc}: the loss became {float(loss.detach())} at batch {bar.n + 1}; "
                    "training diverged (try a lower --lr)"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if average is not None:
                average.update(dist_util.unwrap(model))
            acc.add(outputs)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
    return acc.result(task.ctx)


@torch.no_grad()
def validate(task: Task, model: nn.Module, loader: DataLoader, desc: str, progress: bool) -> dict[str, Any]:
    model.eval()
    acc = task.new_accumulator("val")
    bar = _progress(len(loader), desc, progress)
    try:
        for batch in loader:
            acc.add(task.val_step(model, batch))
            bar.update(1)
    finally:
        bar.close()
    return acc.result(task.ctx)


# ---------------------------------------------------------------------------------------------
# The run


def _loader(
    dataset: Any, config: TrainConfig, ctx: DistContext, *, sampler: Any = None, batch_sampler: Any = None
) -> DataLoader:
    kwargs: dict[str, Any] = {"num_workers": config.num_workers, "pin_memory": ctx.device.startswith("cuda")}
    if config.num_workers > 0:
        kwargs["persistent_workers"] = True
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, shuffle=False, **kwargs)


def _configure_torch(config: TrainConfig, device: torch.device) -> None:
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.is_file():
        raise TrainError(f"{run_dir}: no {STATE_FILE} to resume from")
    try:
        state = read_torch_file(path)
    except CheckpointError as exc:
        raise TrainError(str(exc)) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainError(f"{path}: not a lunakit training state")
    if state.get("format_version") != STATE_VERSION:
        raise TrainError(f"{path}: training state version {state.get('format_version')!r} is not supported")
    return state


def resume_config(run_dir: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The stored config of a run, with `overrides` (epochs, num_workers) applied."""
    state = _load_state(run_dir)
    config = TrainConfig.from_dict(state["config"], str(run_dir / STATE_FILE))
    return replace(config, out=str(run_dir), **overrides)


def train(
    config: TrainConfig, *, resume: bool = False, progress: bool = False, reporter: Reporter = Reporter()
) -> TrainResult:
    """Run (or, with resume, continue) the training described by `config`. `progress` shows
    progress bars on stderr; `reporter` receives the run's notes and results."""
    ctx = dist_util.setup(config.device)
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    try:
        return _train(config, ctx, resume, progress, reporter)
    finally:
        # leave the process's global torch switches as they were (train() may be called as a library)
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        dist_util.teardown(ctx)


def _train(config: TrainConfig, ctx: DistContext, resume: bool, progress: bool, reporter: Reporter) -> TrainResult:
    device = torch.device(ctx.device)
    _configure_torch(config, device)
    run_dir = Path(config.out)
    show = progress and ctx.is_main
    task = make_task(config, ctx)  # checks the augmentation spec before any work
    check_run_dir(run_dir, resume)

    # The model first: a --finetune checkpoint of the wrong kind fails before any data work.
    state = _load_state(run_dir) if resume else None
    seed_everything(config.seed)  # model initialization: the same on every rank
    if state is not None:
        model, info = task.build_model(state["model_args"], state["trainable"])
    else:
        model, info = task.build_model()
    model = task.prepare_model(model)

    dist_util.on_main(ctx, lambda: ensure_cache(config, show, reporter))
    train_uids, val_uids, train_ds, val_ds = _datasets(config, task)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = task.build_optimizer(params)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    average = WeightAverage(model, config.ema) if config.ema else None
    best, start_epoch = _restore(state, config, model, optimizer, scaler, average)
    evaluated = model if average is None else average.model  # what validation and checkpoints see
    if start_epoch > config.epochs:
        if ctx.is_main:
            reporter.result(
                f"train: {run_dir} already finished epoch {start_epoch - 1} of {config.epochs}; "
                "raise --epochs to train on"
            )
        return TrainResult(run_dir=run_dir, model=evaluated, history=[], best=best)
    dist_util.on_main(ctx, lambda: make_run_dir(run_dir))
    ddp_model = dist_util.wrap_model(model, ctx)

    train_sampler = TrainShardSampler(len(train_ds), ctx.rank, ctx.world_size, task.train_period())
    train_loader = _loader(train_ds, config, ctx, sampler=train_sampler)
    val_loader = _val_loader(val_ds, config, ctx, task)

    if ctx.is_main:
        n_train = sum(p.numel() for p in params)
        reporter.note(
            f"train {config.task}: {len(train_uids)} training / {len(val_uids)} validation series, "
            f"{len(train_ds)} samples per epoch ({len(train_sampler)} per rank x {ctx.world_size}), "
            f"{len(val_ds)} validation samples; {info['note']}, {n_train} trainable parameters; "
            f"device {ctx.device}; run folder {run_dir}"
            + (f"; resuming after epoch {start_epoch - 1}" if state is not None else "")
        )
    log = MetricsLog(run_dir, start_epoch, ctx.is_main, resume, reporter.note)
    history: list[dict[str, Any]] = []
    epoch_times: list[float] = []
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            started = time.perf_counter()
            seed = epoch_seed(config.seed, epoch, ctx.rank)
            seed_everything(seed)
            generator = torch.Generator(device=device).manual_seed(seed)
            train_ds.set_epoch(epoch)
            train_result = run_epoch(
                task,
                ddp_model,
                train_loader,
                optimizer,
                scaler,
                generator,
                f"epoch {epoch}/{config.epochs} train",
                show,
                average,
            )
            dist_util.average_buffers(ddp_model, ctx)
            if average is not None:
                dist_util.average_buffers(average.model, ctx)
            val_result = None
            if epoch % config.val_every == 0 or epoch == config.epochs:
                val_result = validate(task, evaluated, val_loader, f"epoch {epoch}/{config.epochs} val", show)
            is_best = val_result is not None and _improves(best, val_result["metrics"], config.selection_metric)
            if is_best:
                value = float(val_result["metrics"].get(config.selection_metric, math.nan))
                best = {"metric": config.selection_metric, "value": value, "epoch": epoch}
            elapsed = time.perf_counter() - started
            epoch_times.append(elapsed)
            record = {
                "epoch": epoch,
                "train": train_result["metrics"],
                "val": val_result["metrics"] if val_result is not None else None,
                "best": dict(best),
                "time_s": round(elapsed, 3),
            }
            history.append(record)
            if ctx.is_main:
                figures = _figures(task, run_dir, epoch, val_result, reporter.note)
                log.write(record, figures)
                if is_best:
                    save_checkpoint(
                        run_dir / BEST_FILE,
                        evaluated,
                        task.kind,
                        config=config,
                        extra={"epoch": epoch, "metrics": record["val"], "best": dict(best)},
                    )
                _save_state(run_dir, config, epoch, model, optimizer, scaler, best, info, average)
                eta = (config.epochs - epoch) * float(np.mean(epoch_times))
                reporter.result(_summary_line(record, task, config.epochs, eta))
            dist_util.barrier(ctx)
    finally:
        log.close()
    if ctx.is_main and best["epoch"] is not None:
        reporter.result(f"best {best['metric']} {best['value']:.4f} at epoch {best['epoch']} -> {run_dir / BEST_FILE}")
    return TrainResult(run_dir=run_dir, model=evaluated, history=history, best=best)


def _datasets(config: TrainConfig, task: Task) -> tuple[list[str], list[str], Any, Any]:
    """(training series, validation series, training dataset, validation dataset) of the run."""
    from lunakit.data import train_val_series
    from lunakit.io.luna import load_candidates

    candidates = load_candidates(config.data)
    if config.hard_negatives is not None:
        from lunakit.data.classification import add_hard_negatives

        candidates = add_hard_negatives(candidates, config.hard_negatives)
    train_uids, val_uids = train_val_series(candidates, val_stride=config.val_stride)
    if not train_uids or not val_uids:
        raise TrainError(
            f"{config.data}: {len(train_uids) + len(val_uids)} series with candidates cannot be split "
            f"into training and validation with --val-stride {config.val_stride}"
        )
    train_ds, val_ds = task.build_datasets(Path(config.cache), candidates, train_uids, val_uids)
    return train_uids, val_uids, train_ds, val_ds


def _restore(
    state: dict[str, Any] | None,
    config: TrainConfig,
    model: nn.Module,
    optimizer: Any,
    scaler: Any,
    average: WeightAverage | None,
) -> tuple[dict[str, Any], int]:
    """(best so far, first epoch to run): a fresh run's, or the resumed state's with the model,
    weight average, optimizer, gradient scaler and random generators put back as they were."""
    if state is None:
        return {"metric": config.selection_metric, "value": None, "epoch": None}, 1
    model.load_state_dict(state["model"])
    if average is not None:
        average.load_state_dict(state["average"])
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return dict(state["best"]), int(state["epoch"]) + 1


def _val_loader(val_ds: Any, config: TrainConfig, ctx: DistContext, task: Task) -> Any:
    """This rank's share of the validation set, in the task's batches where it has its own."""
    val_indices = list(EvalShardSampler(len(val_ds), ctx.rank, ctx.world_size))
    val_batches = task.val_batch_sampler(val_ds, val_indices)
    if val_batches is not None:
        return _loader(val_ds, config, ctx, batch_sampler=val_batches)
    return _loader(val_ds, config, ctx, sampler=val_indices)


def _improves(best: dict[str, Any], metrics: dict[str, float], name: str) -> bool:
    """Whether this validation beats the best so far (NaN counts as worst; ties go to the later
    epoch, as the book does)."""
    value = metrics.get(name, math.nan)
    score = value if math.isfinite(value) else -math.inf
    previous = best["value"] if best["value"] is not None and math.isfinite(best["value"]) else -math.inf
    return best["epoch"] is None or score >= previous


_warned_no_matplotlib = False


def _figures(
    task: Task, run_dir: Path, epoch: int, val_result: dict[str, Any] | None, note: Callable[[str], None]
) -> dict[str, Any]:
    """The validation's pictures; without matplotlib, none (said once)."""
    global _warned_no_matplotlib
    if val_result is None:
        return {}
    try:
        return task.figures(run_dir, epoch, val_result)
    except ImportError as exc:
        if not _warned_no_matplotlib:
            note(f"train: no figures ({exc}; pip install matplotlib)")
            _warned_no_matplotlib = True
        return {}


def _save_state(
    run_dir: Path,
    config: TrainConfig,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    best: dict[str, Any],
    info: dict[str, Any],
    average: WeightAverage | None,
) -> None:
    state = {
        "format": STATE_FORMAT,
        "format_version": STATE_VERSION,
        "config": plain(config),
        "epoch": epoch,
        "model_args": plain(info["model_args"]),
        "trainable": list(info["trainable"]),
        "model": cpu_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "average": average.state_dict() if average is not None else None,
        "best": plain(best),
        "rng": rng_state(),
        "torch_version": str(torch.__version__),
    }
    atomic_write(run_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))
