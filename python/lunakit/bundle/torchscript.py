"""TorchScript bundles: each model scripted with torch.jit.script (the default bundle format)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lunakit.bundle.manifest import (
    FORMAT,
    FORMAT_VERSION,
    BundleError,
    check_export_request,
    manifest_header,
    model_entry,
    write_bundle,
)
from lunakit.errors import first_line
from lunakit.pipeline.options import AnalysisOptions


def export_bundle(
    out: str | os.PathLike, checkpoints: dict[str, str | os.PathLike], options: AnalysisOptions = AnalysisOptions()
) -> Path:
    """Script each checkpoint's model with torch.jit.script and write the bundle to `out`.

    `checkpoints` maps kind ("seg", "cls", optional "mal") to a lunakit checkpoint. The bundle is
    assembled in a temporary folder beside `out` and renamed into place: never half written.
    """
    from lunakit.models.checkpoint import load_checkpoint

    out = check_export_request(out, checkpoints)
    scripted = {}
    for kind, path in checkpoints.items():
        model, _ = load_checkpoint(path, kind=kind)
        scripted[kind] = torch.jit.script(model.eval())

    def write_models(staging: Path) -> dict[str, dict[str, Any]]:
        models = {}
        for kind, module in scripted.items():
            module.save(str(staging / f"{kind}.pt"))
            models[kind] = model_entry(staging, f"{kind}.pt", checkpoints[kind])
        return models

    return write_bundle(out, manifest_header(FORMAT, FORMAT_VERSION), options, write_models)


def load_torchscript_models(
    bundle: Path, manifest: dict[str, Any], device: str | torch.device
) -> dict[str, torch.nn.Module]:
    """The checked bundle's TorchScript files, loaded onto `device` in eval mode."""
    loaded = {}
    for kind, entry in manifest["models"].items():
        try:
            loaded[kind] = torch.jit.load(str(bundle / entry["file"]), map_location=device).eval()
        except RuntimeError as exc:
            first = first_line(exc)
            raise BundleError(f"{bundle / entry['file']}: not a loadable TorchScript model ({first})") from None
    return loaded
