"""ONNX export of the pipeline's models, for runtimes without PyTorch (onnxruntime, TensorRT, ...).

`lunakit export --format onnx` writes an ONNX bundle: a folder with `manifest.json` (format
"lunakit-onnx-bundle": the pipeline options, the opset and, per model, its file, sha256 and
input/output names) and one `.onnx` file per model:

  cls, mal  input "crops" float32 [batch, 1, 32, 48, 48] (clipped HU)
            outputs "logits" [batch, 2], "probability" [batch, 2] (index 1 = positive)
  seg       input "slices" float32 [batch, 7, height, width] (clipped HU)
            output "probability" [batch, 1, height, width]

The batch axis is dynamic for every model; the U-Net's height and width are dynamic too (its
pad-to-a-multiple-of-4 arithmetic is exported as shape operations). The opset is pinned
(OPSET). The exporter is PyTorch's torch.export-based one (`dynamo=True`), which needs the
`onnxscript` package; the older TorchScript-based exporter is deprecated since PyTorch 2.9.

`load_onnx_bundle` checks the manifest and checksums and returns onnxruntime-backed callables
that take and return torch tensors like the TorchScript models, so `lunakit.pipeline.analyze.analyze`
runs on them unchanged.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from lunakit.errors import LunakitError, first_line
from lunakit.models.inputs import example_input
from lunakit.pipeline.options import AnalysisOptions, Models

OPSET = 18
ONNX_FORMAT = "lunakit-onnx-bundle"
ONNX_FORMAT_VERSION = 1


class OnnxExportError(LunakitError):
    """ONNX export or loading failed, or a package it needs is missing."""


@dataclass(frozen=True)
class ModelSignature:
    """Names and dynamic axes of one exported model."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[int, str]  # axis of the (single) input -> its name


SIGNATURES = {
    "cls": ModelSignature(("crops",), ("logits", "probability"), {0: "batch"}),
    "mal": ModelSignature(("crops",), ("logits", "probability"), {0: "batch"}),
    "seg": ModelSignature(("slices",), ("probability",), {0: "batch", 2: "height", 3: "width"}),
}


def _require(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise OnnxExportError(f"ONNX support needs the {package} package: pip install {package}") from None


def export_model(model: torch.nn.Module, kind: str, path: str | os.PathLike, opset: int = OPSET) -> Path:
    """Export one eager model (LunaModel or UNetWrapper, eval mode) to an ONNX file and check it."""
    _require("onnxscript", "onnxscript")
    onnx = _require("onnx", "onnx")
    if kind not in SIGNATURES:
        raise OnnxExportError(f"unknown model kind {kind!r}; expected one of {', '.join(SIGNATURES)}")
    signature = SIGNATURES[kind]
    model = model.eval()
    dynamic = ({axis: torch.export.Dim.DYNAMIC for axis in signature.dynamic_axes},)
    path = Path(path)
    chatter = io.StringIO()
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example_input(model, kind),),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=list(signature.inputs),
                output_names=list(signature.outputs),
                dynamic_shapes=dynamic,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:
        first = first_line(exc)
        raise OnnxExportError(f"{path}: ONNX export of the {kind} model failed ({first})") from exc
    finally:
        registry_log.setLevel(level)
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise OnnxExportError(f"{path}: exported model fails the ONNX checker ({exc})") from exc
    return path


def export_onnx_bundle(
    out: str | os.PathLike,
    checkpoints: dict[str, str | os.PathLike],
    options: AnalysisOptions = AnalysisOptions(),
    opset: int = OPSET,
) -> Path:
    """Export each checkpoint's model to ONNX and write the ONNX bundle to `out` (never half written)."""
    from lunakit.bundle.manifest import check_export_request, manifest_header, model_entry, write_bundle
    from lunakit.models.checkpoint import load_checkpoint

    out = check_export_request(out, checkpoints, SIGNATURES)
    loaded = {kind: load_checkpoint(path, kind=kind)[0] for kind, path in checkpoints.items()}

    def write_models(staging: Path) -> dict[str, dict[str, Any]]:
        models = {}
        for kind, model in loaded.items():
            file_name = f"{kind}.onnx"
            export_model(model, kind, staging / file_name, opset)
            signature = SIGNATURES[kind]
            models[kind] = model_entry(
                staging,
                file_name,
                checkpoints[kind],
                inputs=list(signature.inputs),
                outputs=list(signature.outputs),
                dynamic_axes={signature.inputs[0]: {str(a): n for a, n in signature.dynamic_axes.items()}},
            )
        return models

    header = manifest_header(ONNX_FORMAT, ONNX_FORMAT_VERSION)
    return write_bundle(out, header, options, write_models, onnx_opset=opset)


def read_onnx_manifest(bundle: str | os.PathLike) -> dict[str, Any]:
    """The ONNX bundle's manifest, checked as every bundle's is (manifest.read_checked_manifest)."""
    from lunakit.bundle.manifest import read_checked_manifest

    return read_checked_manifest(bundle, ONNX_FORMAT, ONNX_FORMAT_VERSION, SIGNATURES, "ONNX bundle")


class OnnxModel:
    """An onnxruntime session called like the torch model: tensor in, tensor (or tuple) out."""

    def __init__(self, path: str | os.PathLike, providers: Optional[Sequence[str]] = None) -> None:
        ort = _require("onnxruntime", "onnxruntime")
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:
            raise OnnxExportError(f"{path}: onnxruntime cannot load it ({first_line(exc)})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(inputs, dtype=np.float32)})

    def __call__(self, x: torch.Tensor) -> Any:
        outputs = [torch.from_numpy(o).to(x.device) for o in self.run(x.detach().cpu().numpy())]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def load_onnx_bundle(
    bundle: str | os.PathLike, providers: Optional[Sequence[str]] = None
) -> tuple[Models, AnalysisOptions, dict[str, Any]]:
    """Checked ONNX bundle -> (Models of OnnxModel callables, pipeline options, manifest)."""
    bundle = Path(bundle)
    manifest = read_onnx_manifest(bundle)
    loaded = {kind: OnnxModel(bundle / entry["file"], providers) for kind, entry in manifest["models"].items()}
    models = Models(
        seg=loaded["seg"],
        cls=loaded["cls"],
        mal=loaded.get("mal"),  # type: ignore[arg-type]
        checksums={k: e["sha256"] for k, e in manifest["models"].items()},
        compiled=True,
    )
    return models, AnalysisOptions.from_dict(manifest.get("options", {})), manifest
