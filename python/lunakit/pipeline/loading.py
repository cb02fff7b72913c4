"""Models for the pipeline straight from checkpoints, on a device the user names."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from lunakit.errors import LunakitError
from lunakit.pipeline.options import Models


def resolve_device(name: str) -> torch.device:
    """A torch device the user asked for, refusing CUDA where there is none."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LunakitError(f"--device: unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LunakitError(f"--device {name}: no CUDA GPU is available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise LunakitError(f"--device {name}: only cpu and cuda are supported")
    return device


def models_from_checkpoints(seg: str, cls: str, mal: Optional[str], device: torch.device) -> Models:
    """The seg, cls (and mal) checkpoints' eager models on `device`, with their files' sha256."""
    from lunakit.io.files import sha256_of
    from lunakit.models.checkpoint import load_checkpoint

    loaded = {}
    checksums = {}
    for kind, path in (("seg", seg), ("cls", cls), ("mal", mal)):
        if path is None:
            continue
        model, _ = load_checkpoint(path, kind=kind)
        loaded[kind] = model.to(device).eval()
        checksums[kind] = sha256_of(Path(path))
    return Models(seg=loaded["seg"], cls=loaded["cls"], mal=loaded.get("mal"), checksums=checksums)
