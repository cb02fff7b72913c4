"""int8 quantization of the nodule / malignancy classifier for CPU deployment.

Method: static post-training quantization in eager mode (torch.ao.quantization, x86 backend =
fbgemm + oneDNN kernels). Why not the alternatives, as measured with torch 2.13:
- dynamic quantization converts only nn.Linear (and RNNs); LunaModel spends nearly all its time
  in 8 Conv3d layers, which it would leave in float32: no speed-up worth having.
- FX graph mode cannot trace LunaModel (its input-shape check is Python control flow).
- eager mode works: a copy of the model with QuantStub after the input batch norm and
  DeQuantStub before the softmax, each Conv3d fused with its ReLU (quantized ConvReLU3d),
  MaxPool3d and the head Linear quantized too; weights per-channel int8, activations uint8 with
  ranges observed (histogram observer) on calibration crops. The result scripts with
  torch.jit.script, so it goes into a normal TorchScript bundle.
The input batch norm stays float (it is an affine map of raw HU, cheap), so the quantized
input is already normalised.

Quantized kernels run on the CPU only: a quantized bundle is refused on CUDA by `lunakit serve`.

`lunakit export --quantize int8 --calibration DATA` writes a TorchScript bundle whose cls (and
mal) files are the int8 models; the manifest's "quantization" entry records the method and the
calibration source. benchmarks/bench_quant.py measures size, CPU speed and AUC against float32.
"""

from __future__ import annotations

import copy
import os
import random
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from lunakit.errors import LunakitError, first_line
from lunakit.models.classifier import CROP_SIZE_IRC, LunaModel

BACKEND = "x86"
METHOD = "static post-training quantization, eager mode (QuantStub/DeQuantStub, fused Conv3d+ReLU)"
QUANTIZED_KINDS = ("cls", "mal")


class QuantizeError(LunakitError):
    """Quantization cannot run on what it was given (model, calibration data, backend)."""


@contextmanager
def _engine(backend: str) -> Iterator[None]:
    if backend not in torch.backends.quantized.supported_engines:
        raise QuantizeError(
            f"quantization backend {backend!r} is not available in this PyTorch "
            f"(supported: {', '.join(torch.backends.quantized.supported_engines)})"
        )
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = backend
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _ao() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "torch.ao.quantization is deprecated"
        import torch.ao.quantization as tq
    return tq


class QuantizableLunaModel(nn.Module):
    """LunaModel with quantization boundaries: float batch norm -> int8 blocks and head -> float softmax.

    Same input check and outputs (logits, softmax) as LunaModel.
    """

    def __init__(self, model: LunaModel) -> None:
        super().__init__()
        tq = _ao()
        self.in_channels = model.in_channels
        self.tail_batchnorm = copy.deepcopy(model.tail_batchnorm)
        self.quant = tq.QuantStub()
        self.block1 = copy.deepcopy(model.block1)
        self.block2 = copy.deepcopy(model.block2)
        self.block3 = copy.deepcopy(model.block3)
        self.block4 = copy.deepcopy(model.block4)
        self.head_linear = copy.deepcopy(model.head_linear)
        self.dequant = tq.DeQuantStub()
        self.head_softmax = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 5 or x.shape[1] != self.in_channels or x.shape[2] != 32 or x.shape[3] != 48 or x.shape[4] != 48:
            raise ValueError("LunaModel: input must be [B, in_channels, 32, 48, 48]")
        x = self.tail_batchnorm(x)  # (B, 1, 32, 48, 48) float
        x = self.quant(x)  # quint8 from here
        x = self.block1(x)  # (B, 8, 16, 24, 24)
        x = self.block2(x)  # (B, 16, 8, 12, 12)
        x = self.block3(x)  # (B, 32, 4, 6, 6)
        x = self.block4(x)  # (B, 64, 2, 3, 3)
        x = x.flatten(1)  # (B, 1152)
        logits = self.dequant(self.head_linear(x))  # (B, 2) float
        return logits, self.head_softmax(logits)


def quantize_classifier(
    model: nn.Module, calibration: torch.Tensor, batch_size: int = 32, backend: str = BACKEND
) -> nn.Module:
    """An int8 copy of a float LunaModel, its activation ranges observed on `calibration` crops.

    calibration: float HU crops [N, 1, 32, 48, 48] (clipped as the pipeline clips them); use
    a few hundred crops like those the model will see, positives included.
    """
    if type(model) is not LunaModel:
        raise QuantizeError(f"quantize: expected a float LunaModel, got {type(model).__name__}")
    if calibration.dim() != 5 or tuple(calibration.shape[1:]) != (model.in_channels, *CROP_SIZE_IRC):
        raise QuantizeError(
            f"quantize: calibration crops must be [N, {model.in_channels}, 32, 48, 48], got {list(calibration.shape)}"
        )
    if calibration.shape[0] < 1:
        raise QuantizeError("quantize: no calibration crops")
    if not bool(torch.isfinite(calibration).all()):
        raise QuantizeError("quantize: calibration crops contain NaN or infinite values")
    tq = _ao()
    with _engine(backend), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = QuantizableLunaModel(model.cpu().eval()).eval()
        for block in (qmodel.block1, qmodel.block2, qmodel.block3, qmodel.block4):
            tq.fuse_modules(block, [["conv1", "relu1"], ["conv2", "relu2"]], inplace=True)
        qmodel.qconfig = tq.get_default_qconfig(backend)
        qmodel.tail_batchnorm.qconfig = None  # stays float, before the QuantStub
        tq.prepare(qmodel, inplace=True)
        with torch.inference_mode():
            for start in range(0, calibration.shape[0], batch_size):
                qmodel(calibration[start : start + batch_size].float().cpu())
        tq.convert(qmodel, inplace=True)
    return qmodel.eval()


def script_quantized(qmodel: nn.Module) -> torch.jit.ScriptModule:
    """torch.jit.script of a quantized model (as every bundle model must be)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(qmodel)


# -- calibration and evaluation crops --------------------------------------------------------------


def luna_crops(
    luna_root: str | os.PathLike,
    count: Optional[int] = None,
    seed: int = 0,
    series_uids: Optional[Sequence[str]] = None,
    crop_size: Sequence[int] = CROP_SIZE_IRC,
    crop_mode: str = "shift",
    hu_window: tuple[float, float] = (-1000.0, 1000.0),
    positive_share: float = 0.25,
) -> tuple[torch.Tensor, np.ndarray]:
    """Crops around the candidates of a LUNA16-layout folder -> (crops [N, 1, *crop_size], is_nodule [N]).

    With `count`, a seeded sample: up to `positive_share` of it nodules, the rest non-nodules
    (the candidate list is mostly non-nodules). Scans are read one at a time.
    """
    from lunakit.io import ct
    from lunakit.io.luna import find_scans, load_candidates
    from lunakit.pipeline import ops

    candidates = load_candidates(luna_root)
    if series_uids is not None:
        keep = set(series_uids)
        candidates = [c for c in candidates if c.series_uid in keep]
    if not candidates:
        raise QuantizeError(f"{luna_root}: no candidates with scans on disk")
    if count is not None and count < len(candidates):
        rng = random.Random(seed)
        positives = [c for c in candidates if c.is_nodule]
        negatives = [c for c in candidates if not c.is_nodule]
        n_pos = min(len(positives), int(round(count * positive_share)))
        candidates = rng.sample(positives, n_pos) + rng.sample(negatives, min(len(negatives), count - n_pos))
    scans = find_scans(luna_root)
    by_series: dict[str, list] = {}
    for c in candidates:
        by_series.setdefault(c.series_uid, []).append(c)
    crops, labels = [], []
    for uid in sorted(by_series):
        scan = ct.load(scans[uid])
        group = by_series[uid]
        centers_irc = scan.geometry.xyz_to_irc(np.array([c.center_xyz for c in group], dtype=np.float64))
        volume = torch.from_numpy(np.ascontiguousarray(scan.hu))
        crops.append(
            ops.extract_crops(
                volume, torch.from_numpy(centers_irc), size=crop_size, mode=crop_mode, fill=hu_window[0], clip=hu_window
            )
        )
        labels.extend(bool(c.is_nodule) for c in group)
    return torch.cat(crops), np.array(labels, dtype=bool)


def calibration_crops(source: str | os.PathLike, count: int = 256, seed: int = 0) -> torch.Tensor:
    """Calibration crops from a LUNA16-layout folder, or from a .pt file holding a crop tensor.

    A .pt file is read with torch.load(weights_only=True): a float tensor [N, 1, 32, 48, 48] or
    [N, 32, 48, 48], or a tuple/list whose first item is one (as a dataset item is).
    """
    path = Path(source)
    if path.is_dir():
        crops, _ = luna_crops(path, count=count, seed=seed)
        return crops
    if not path.is_file():
        raise QuantizeError(f"{path}: calibration data not found (a LUNA16 folder or a .pt file of crops)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise QuantizeError(f"{path}: not a readable torch file of crops ({first_line(exc)})") from None
    if isinstance(payload, (tuple, list)) and payload and isinstance(payload[0], torch.Tensor):
        payload = payload[0]
    if not isinstance(payload, torch.Tensor) or not payload.is_floating_point():
        raise QuantizeError(f"{path}: expected a float tensor of crops")
    crops = payload.float()
    if crops.dim() == 4 and tuple(crops.shape[1:]) == CROP_SIZE_IRC:
        crops = crops.unsqueeze(1)  # [N, 32, 48, 48] -> [N, 1, 32, 48, 48]
    if crops.dim() != 5 or tuple(crops.shape[1:]) != (1, *CROP_SIZE_IRC):
        raise QuantizeError(f"{path}: crops must be [N, 1, 32, 48, 48], got {list(payload.shape)}")
    return crops[:count]


# -- the quantized bundle --------------------------------------------------------------------------


def export_quantized_bundle(
    out: str | os.PathLike,
    checkpoints: dict[str, str | os.PathLike],
    options: Any,
    calibration: torch.Tensor,
    calibration_source: str = "",
    backend: str = BACKEND,
) -> Path:
    """A TorchScript bundle (lunakit.bundle format) whose classifiers are int8; seg stays float32.

    The same checks and the same staged writing as `export_bundle` (manifest.write_bundle), with
    cls / mal quantized and scripted, and a "quantization" entry in the manifest.
    """
    from lunakit.bundle.manifest import (
        FORMAT,
        FORMAT_VERSION,
        check_export_request,
        manifest_header,
        model_entry,
        write_bundle,
    )
    from lunakit.models.checkpoint import load_checkpoint

    out = check_export_request(out, checkpoints)
    scripted = {}
    for kind, path in checkpoints.items():
        model, _ = load_checkpoint(path, kind=kind)
        if kind in QUANTIZED_KINDS:
            scripted[kind] = script_quantized(quantize_classifier(model, calibration, backend=backend))
        else:
            scripted[kind] = torch.jit.script(model.eval())

    def write_models(staging: Path) -> dict[str, dict[str, Any]]:
        models = {}
        for kind, module in scripted.items():
            module.save(str(staging / f"{kind}.pt"))
            extra = {"dtype": "int8"} if kind in QUANTIZED_KINDS else {}
            models[kind] = model_entry(staging, f"{kind}.pt", checkpoints[kind], **extra)
        return models

    quantization = {
        "dtype": "int8",
        "method": METHOD,
        "backend": backend,
        "models": [kind for kind in QUANTIZED_KINDS if kind in checkpoints],
        "calibration": {
            "source": os.path.basename(str(calibration_source)) or None,
            "crops": int(calibration.shape[0]),
        },
        "device": "cpu",
    }
    return write_bundle(out, manifest_header(FORMAT, FORMAT_VERSION), options, write_models, quantization=quantization)
