"""Model bundles: everything a deployment (Python or C++) needs to analyze a scan.

manifest (shared by every format) <- torchscript, aoti, onnx, quantize (one format each) <- this
module, which loads any of them. docs/design.md, "Bundle"; docs/serving.md for the formats.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch

from lunakit.bundle.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MODEL_FORMATS,
    MODEL_KINDS,
    BundleError,
    checkpoint_options,
    model_format,
    parse_options,
    read_manifest,
)
from lunakit.bundle.torchscript import export_bundle, load_torchscript_models
from lunakit.errors import first_line
from lunakit.pipeline.options import AnalysisOptions, Models

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "MODEL_FORMATS",
    "MODEL_KINDS",
    "BundleError",
    "checkpoint_options",
    "export_bundle",
    "load_bundle",
    "model_format",
    "parse_options",
    "read_manifest",
]


def load_bundle(
    bundle: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[Models, AnalysisOptions, dict[str, Any]]:
    """Load a checked bundle -> (models on `device`, pipeline options, manifest)."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    loaded: dict[str, Optional[torch.nn.Module]]
    if model_format(manifest) == "aoti":
        from lunakit.bundle.aoti import load_aoti_models

        loaded = dict(load_aoti_models(bundle, manifest, device))
    else:
        loaded = dict(load_torchscript_models(bundle, manifest, device))
    options = AnalysisOptions.from_dict(manifest.get("options", {}))
    _probe(bundle, manifest, loaded, options, device)
    models = Models(
        seg=loaded["seg"],
        cls=loaded["cls"],
        mal=loaded.get("mal"),
        checksums={k: e["sha256"] for k, e in manifest["models"].items()},
        compiled=model_format(manifest) == "aoti",
    )
    return models, options, manifest


@torch.no_grad()
def _probe(
    bundle: Path, manifest: dict[str, Any], loaded: dict[str, Any], options: AnalysisOptions, device: str | torch.device
) -> None:
    """Run each model once on zeros of the pipeline's input shape, so that a model that does not
    fit the pipeline is refused at load (as the C++ Bundle::load does), not halfway through a scan."""
    channels = 2 * options.context_slices + 1
    for kind, model in loaded.items():
        shape = (1, channels, 64, 64) if kind == "seg" else (1, 1, *options.crop_size)
        try:
            output = model(torch.zeros(shape, device=device))
            ok = (
                (output.dim() == 4 and tuple(output.shape[-2:]) == (64, 64))
                if kind == "seg"
                else (isinstance(output, tuple) and len(output) == 2 and output[1].shape[-1] >= 2)
            )
        except Exception as exc:  # a TorchScript model raises RuntimeError subclasses
            first = first_line(exc)
            raise BundleError(
                f"{bundle / manifest['models'][kind]['file']}: does not take input {list(shape)} ({first})"
            ) from None
        if not ok:
            raise BundleError(
                f"{bundle / manifest['models'][kind]['file']}: gives an unexpected output for input {list(shape)}"
            )
