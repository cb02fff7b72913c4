"""lunakit's checkpoint file: one model with everything needed to rebuild it.

A checkpoint is a `torch.save` of a dict holding only plain types and tensors
(so `torch.load(weights_only=True)` reads it, no pickled code runs):

    format          "lunakit-checkpoint"
    format_version  1
    kind            "cls" (nodule classifier) | "mal" (malignancy) | "seg" (segmentation)
    model_class     "LunaModel" | "UNetWrapper"
    model_args      constructor keyword arguments
    state_dict      the model's state_dict
    config          the run's configuration (a dataclass stored as a dict)
    config_class    "module.QualName" of that dataclass, or None for a dict
    lunakit_version, torch_version
    extra           anything else of plain types (epoch, metrics, source file, ...)

Files are written atomically (temporary file in the same folder, then rename).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lunakit
from lunakit.errors import LunakitError
from lunakit.io.files import atomic_write
from lunakit.models.classifier import LunaModel
from lunakit.models.unet import UNetWrapper, with_pool

FORMAT = "lunakit-checkpoint"
FORMAT_VERSION = 1

MODEL_CLASSES: dict[str, type[nn.Module]] = {"LunaModel": LunaModel, "UNetWrapper": UNetWrapper}
KIND_MODEL_CLASS: dict[str, str] = {"cls": "LunaModel", "mal": "LunaModel", "seg": "UNetWrapper"}
KINDS = tuple(KIND_MODEL_CLASS)


class CheckpointError(LunakitError):
    """A checkpoint file is missing, unreadable, of another format or kind, or does not fit its model."""


def plain(value: Any, where: str = "config") -> Any:
    """`value` as plain types that `torch.load(weights_only=True)` accepts (Path -> str, dataclass -> dict)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if value is None or isinstance(value, torch.Tensor):
        return value
    for exact in (bool, int, float, str):  # subclasses (TorchVersion, numpy.float64) are not safe-loadable
        if isinstance(value, exact):
            return exact(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is not a str or int")
            out[key] = plain(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        items = [plain(item, f"{where}[{n}]") for n, item in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    raise TypeError(f"{where}: {type(value).__name__} cannot be stored in a checkpoint (use plain types)")


def model_class_name(model: nn.Module) -> str:
    """The registered name of `model`'s class (a scripted model cannot be checkpointed this way)."""
    for name, cls in MODEL_CLASSES.items():
        if type(model) is cls:
            return name
    raise TypeError(f"cannot checkpoint a {type(model).__name__}; known: {', '.join(MODEL_CLASSES)}")


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights and buffers on the CPU, as checkpoints and training states store them."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    kind: str,
    config: Any = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `model` (with its kind, constructor arguments, config and versions) to `path`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    class_name = model_class_name(model)
    if KIND_MODEL_CLASS[kind] != class_name:
        raise ValueError(f"a {kind!r} checkpoint holds a {KIND_MODEL_CLASS[kind]}, got a {class_name}")
    is_dataclass = dataclasses.is_dataclass(config) and not isinstance(config, type)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model_class": class_name,
        "model_args": plain(model.init_args(), "model_args"),
        "state_dict": cpu_state_dict(model),
        "config": plain(config if config is not None else {}),
        "config_class": f"{type(config).__module__}.{type(config).__qualname__}" if is_dataclass else None,
        "lunakit_version": lunakit.__version__,
        "torch_version": str(torch.__version__),
        "extra": plain(extra if extra is not None else {}, "extra"),
    }
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"{path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a file name")
    try:
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    return path


def read_torch_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """torch.load(weights_only=True) with one-line errors for a missing, truncated or foreign file.

    weights_only=True: loading never runs pickled code, so a foreign file cannot execute anything.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{path}: empty file")
    # torch.save writes a zip archive; torch < 1.6 (the book's files) wrote a pickle stream (protocol byte 0x80)
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        raise CheckpointError(f"{path}: not a torch file (neither a zip archive nor a pickle stream)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for foreign / truncated files
        raise CheckpointError(f"{path}: not a readable torch file ({_load_failure_reason(exc)})") from exc


def _load_failure_reason(exc: BaseException) -> str:
    """The informative part of torch.load's (often multi-paragraph) error, in one short line."""
    inner = exc.__context__ if str(exc).startswith("Weights only load failed") and exc.__context__ else exc
    text = str(inner).strip()
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if match:
        return f"it holds a pickled Python object {match.group(1)}, which safe loading refuses"
    reason = text.splitlines()[0].split(". ")[0] if text else type(inner).__name__
    return reason if len(reason) <= 160 else reason[:157] + "..."


def build_model(
    model_class: str, model_args: dict[str, Any], state_dict: dict[str, torch.Tensor], source: str
) -> nn.Module:
    """Construct `model_class(**model_args)` and load `state_dict` strictly, in eval mode."""
    if model_class not in MODEL_CLASSES:
        raise CheckpointError(f"{source}: unknown model class {model_class!r}")
    if model_class == "UNetWrapper":
        model_args = with_pool(model_args)
    try:
        model = MODEL_CLASSES[model_class](**model_args)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: bad arguments for {model_class}: {exc}") from exc
    load_state_strict(model, state_dict, source)
    return model.eval()


def load_state_strict(model: nn.Module, state_dict: Any, source: str) -> None:
    """load_state_dict(strict=True), its key and shape mismatches turned into one CheckpointError line."""
    name = type(model).__name__
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{source}: state dict is not a dict of tensors")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: keys do not match {name}: {len(missing)} missing ({_few(missing)}), "
            f"{len(unexpected)} unexpected ({_few(unexpected)})"
        )
    wrong = [k for k, v in state_dict.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{source}: {len(wrong)} tensors have the wrong shape for {name}, e.g. {k}: "
            f"{tuple(state_dict[k].shape)} instead of {tuple(expected[k].shape)}"
        )
    model.load_state_dict(state_dict, strict=True)
    for k, v in model.state_dict().items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{source}: {k} holds NaN or infinite values")


def _few(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (", ..." if len(names) > limit else "") if names else "none"


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", kind: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored at `path` (eval mode) -> (model, metadata without the state dict).

    With `kind`, a checkpoint of another kind is refused.
    """
    payload = read_torch_file(path, map_location)
    source = str(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        is_book = isinstance(payload, dict) and "model_state" in payload
        hint = " (a book .state file? convert it with `lunakit import-book`)" if is_book else ""
        raise CheckpointError(f"{source}: not a lunakit checkpoint{hint}")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: checkpoint format version {version!r} is not supported (this lunakit reads {FORMAT_VERSION})"
        )
    for field in ("kind", "model_class", "model_args", "state_dict"):
        if field not in payload:
            raise CheckpointError(f"{source}: checkpoint lacks its {field!r} entry")
    stored_kind = payload["kind"]
    if stored_kind not in KINDS:
        raise CheckpointError(f"{source}: unknown model kind {stored_kind!r}")
    if kind is not None and stored_kind != kind:
        raise CheckpointError(f"{source}: holds a {stored_kind!r} model, expected {kind!r}")
    expected_class = KIND_MODEL_CLASS[stored_kind]
    if payload["model_class"] != expected_class:
        raise CheckpointError(
            f"{source}: a {stored_kind!r} model must be a {expected_class}, not {payload['model_class']!r}"
        )
    if not isinstance(payload["model_args"], dict):
        raise CheckpointError(f"{source}: model_args is not a dict")
    model = build_model(payload["model_class"], payload["model_args"], payload["state_dict"], source)
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta


__all__ = [
    "CheckpointError",
    "FORMAT",
    "FORMAT_VERSION",
    "KINDS",
    "load_checkpoint",
    "save_checkpoint",
]


def write_untrained_checkpoints(
    folder: str | os.PathLike, kinds: tuple[str, ...] = ("seg", "cls", "mal"), seed: int = 0
) -> dict[str, Path]:
    """Seeded, untrained checkpoints of the given kinds in folder, for smoke tests and benchmarks.

    Their input batch norms get HU-like running statistics (mean -500, sd 500), so that even
    untrained they give graded, not saturated, probabilities on CT input.
    """
    folder = Path(folder)
    torch.manual_seed(seed)
    paths = {}
    for kind in kinds:
        model = UNetWrapper() if kind == "seg" else LunaModel()
        norm = model.input_batchnorm if kind == "seg" else model.tail_batchnorm
        norm.running_mean.fill_(-500.0)
        norm.running_var.fill_(500.0**2)
        paths[kind] = save_checkpoint(folder / f"{kind}.pt", model.eval(), kind)
    return paths
