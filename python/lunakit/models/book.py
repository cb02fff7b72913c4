"""Import the book's trained models: a `.state` file -> a lunakit checkpoint.

The book ("Deep Learning with PyTorch", part 2) saves a dict with `model_state`
(the state_dict), `model_name`, `optimizer_state`, `epoch`,
`totalTrainingSamples_count` and sometimes `sys_argv` and `time`. This module
rebuilds the matching lunakit model from the key names and shapes, loads the
weights with strict=True and writes a lunakit checkpoint
(`lunakit import-book FILE.state --kind cls|seg|mal --out model.pt`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lunakit.io.files import sha256_of
from lunakit.models.checkpoint import (
    KIND_MODEL_CLASS,
    KINDS,
    CheckpointError,
    build_model,
    read_torch_file,
    save_checkpoint,
)

BOOK_METADATA_FIELDS = ("model_name", "optimizer_name", "epoch", "totalTrainingSamples_count", "sys_argv", "time")


def book_state_dict(payload: Any, source: str) -> dict[str, torch.Tensor]:
    """The state_dict inside a book .state payload (or the payload itself when it is a bare state_dict)."""
    if isinstance(payload, dict) and "model_state" in payload:
        state = payload["model_state"]
    elif isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state = payload
    else:
        raise CheckpointError(f"{source}: not a book checkpoint (no 'model_state' entry)")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: 'model_state' is not a dict of tensors")
    return state


def model_class_of_keys(state: dict[str, torch.Tensor]) -> str | None:
    """Which lunakit model the book's parameter names belong to, or None."""
    if "tail_batchnorm.weight" in state and "head_linear.weight" in state:
        return "LunaModel"
    if "input_batchnorm.weight" in state and "unet.last.weight" in state:
        return "UNetWrapper"
    return None


def model_args_from_state(model_class: str, state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Constructor arguments read off the tensor shapes (the strict load then checks all of them)."""
    try:
        if model_class == "LunaModel":
            return {
                "in_channels": int(state["tail_batchnorm.weight"].shape[0]),
                "conv_channels": int(state["block1.conv1.weight"].shape[0]),
            }
        levels = {int(k.split(".")[2]) for k in state if k.startswith("unet.down_path.")}
        first_width = int(state["unet.down_path.0.block.0.weight"].shape[0])
        wf = round(math.log2(first_width))
        if 2**wf != first_width:
            raise CheckpointError(f"{source}: first U-Net level has {first_width} channels, not a power of 2")
        return {
            "in_channels": int(state["input_batchnorm.weight"].shape[0]),
            "n_classes": int(state["unet.last.weight"].shape[0]),
            "depth": max(levels) + 1,
            "wf": wf,
            "padding": True,  # not recorded in the weights; the book always trains with padding
            "batch_norm": "unet.down_path.0.block.2.weight" in state,
            "up_mode": "upsample" if "unet.up_path.0.up.1.weight" in state else "upconv",
            "pool": "avg",  # not in the weights either: the book's U-Net downsamples with avg_pool2d
        }
    except (KeyError, IndexError, ValueError) as exc:
        raise CheckpointError(f"{source}: cannot read {model_class} sizes from the weights ({exc})") from exc


def import_book(path: str | os.PathLike, kind: str) -> tuple[nn.Module, dict[str, Any]]:
    """Load a book .state file as a lunakit model of `kind` -> (model in eval mode, book metadata)."""
    if kind not in KINDS:
        raise CheckpointError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
    source = str(path)
    payload = read_torch_file(path, map_location="cpu")
    state = book_state_dict(payload, source)
    found = model_class_of_keys(state)
    wanted = KIND_MODEL_CLASS[kind]
    if found is None:
        raise CheckpointError(f"{source}: parameter names match neither LunaModel nor UNetWrapper")
    if found != wanted:
        fits = [k for k, c in KIND_MODEL_CLASS.items() if c == found]
        raise CheckpointError(
            f"{source}: holds a {found}, not a {wanted} as --kind {kind} needs (use --kind {'|'.join(fits)})"
        )
    model = build_model(found, model_args_from_state(found, state, source), state, source)
    metadata = {}
    if isinstance(payload, dict):
        for field in BOOK_METADATA_FIELDS:
            if field in payload:
                value = payload[field]
                metadata[field] = value if isinstance(value, (int, float, str, list, type(None))) else str(value)
    return model, metadata


def convert(book_path: str | os.PathLike, kind: str, out: str | os.PathLike) -> Path:
    """Import a book .state file and write it as a lunakit checkpoint at `out` (atomically)."""
    book_path = Path(book_path)
    model, metadata = import_book(book_path, kind)
    extra = {"imported_from": book_path.name, "source_sha256": sha256_of(book_path), "book": metadata}
    return save_checkpoint(out, model, kind, config={"origin": "book"}, extra=extra)
