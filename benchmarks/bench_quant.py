"""int8 vs float32 classifier: file size, CPU speed and AUC on phantom validation crops.

The classifier is quantized as `lunakit export --quantize int8` does it (lunakit.bundle.quantize:
static post-training quantization, eager mode, x86 backend), calibrated on crops of the
training series and evaluated on the validation series (split as the book splits, by series).
Both models are timed as deployed: TorchScript, on the CPU, after warm-up.

    .venv/bin/python benchmarks/bench_quant.py [--cls CKPT] [--data LUNA_ROOT] [--scans 12]

Classifier: --cls (a lunakit checkpoint), else the book's trained classifier from
$LUNAKIT_TEST_DATA/book-models when present, else a seeded fresh model (its AUC is ~0.5 and only
the change means anything). Data: --data (a LUNA16-layout folder), else a phantom dataset
(lunakit.synth) written to a temporary folder. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

BOOK_CLS = Path("book-models") / "cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state"


def load_classifier(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    from lunakit.models import LunaModel

    if args.cls:
        from lunakit.models.checkpoint import load_checkpoint

        return load_checkpoint(args.cls, kind="cls")[0], args.cls
    data = os.environ.get("LUNAKIT_TEST_DATA")
    if data and (Path(data) / BOOK_CLS).is_file():
        from lunakit.models.book import import_book

        return import_book(Path(data) / BOOK_CLS, "cls")[0], f"book model ({BOOK_CLS.name})"
    torch.manual_seed(0)
    model = LunaModel()
    model.tail_batchnorm.running_mean.fill_(-500.0)
    model.tail_batchnorm.running_var.fill_(500.0**2)
    return model.eval(), "seeded fresh model (untrained: AUC ~0.5)"


def saved_size(module: torch.jit.ScriptModule) -> int:
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return len(buffer.getvalue())


def crops_per_second(module: torch.nn.Module, crops: torch.Tensor, batch: int, seconds: float) -> float:
    x = crops[:batch]
    with torch.inference_mode():
        for _ in range(3):
            module(x)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            module(x)
            count += batch
        return count / (time.perf_counter() - started)


def probabilities(module: torch.nn.Module, crops: torch.Tensor, batch: int = 64) -> np.ndarray:
    with torch.inference_mode():
        return torch.cat([module(crops[k : k + batch])[1][:, 1] for k in range(0, len(crops), batch)]).double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cls", default=None, help="lunakit classifier checkpoint")
    parser.add_argument("--data", default=None, help="LUNA16-layout folder (default: a phantom dataset)")
    parser.add_argument("--scans", type=int, default=12, help="phantom scans to write without --data")
    parser.add_argument("--val-stride", type=int, default=3, help="every N-th series is validation")
    parser.add_argument("--calibration-crops", type=int, default=256)
    parser.add_argument("--eval-crops", type=int, default=600, help="validation crops (a seeded sample)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per model and batch size")
    args = parser.parse_args()

    from lunakit.bundle.quantize import BACKEND, METHOD, luna_crops, quantize_classifier, script_quantized
    from lunakit.io.luna import find_scans, split_series
    from lunakit.train.metrics import roc_auc

    model, source = load_classifier(args)
    with tempfile.TemporaryDirectory(prefix="lunakit-quant-") as tmp:
        root = Path(args.data) if args.data else None
        if root is None:
            from lunakit.synth import make_dataset

            root = make_dataset(Path(tmp) / "phantom", n_scans=args.scans, seed=2026)
        train, val = split_series(find_scans(root), val_stride=args.val_stride)
        calibration, _ = luna_crops(root, count=args.calibration_crops, seed=0, series_uids=train)
        evaluation, labels = luna_crops(root, count=args.eval_crops, seed=1, series_uids=val)

    started = time.perf_counter()
    qmodel = quantize_classifier(model, calibration)
    quantize_s = time.perf_counter() - started
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        float_script = torch.jit.script(model.eval())
    int8_script = script_quantized(qmodel)

    p_float = probabilities(float_script, evaluation)
    p_int8 = probabilities(int8_script, evaluation)
    auc_float, auc_int8 = roc_auc(labels, p_float), roc_auc(labels, p_int8)
    speed = {}
    for batch in (1, 32):
        f = crops_per_second(float_script, evaluation, batch, args.seconds)
        q = crops_per_second(int8_script, evaluation, batch, args.seconds)
        speed[f"batch_{batch}"] = {
            "float32_crops_per_s": round(f, 2),
            "int8_crops_per_s": round(q, 2),
            "speedup": round(q / f, 2),
        }
    size_float, size_int8 = saved_size(float_script), saved_size(int8_script)
    difference = np.abs(p_int8 - p_float)
    print(
        json.dumps(
            {
                "benchmark": "bench_quant",
                "classifier": source,
                "method": METHOD,
                "backend": BACKEND,
                "data": str(args.data or f"phantom dataset, {args.scans} scans (seed 2026)"),
                "calibration_crops": int(len(calibration)),
                "evaluation_crops": int(len(evaluation)),
                "evaluation_positives": int(labels.sum()),
                "quantize_seconds": round(quantize_s, 2),
                "size_bytes": {"float32": size_float, "int8": size_int8, "ratio": round(size_float / size_int8, 2)},
                "cpu_speed": speed,
                "torch_threads": torch.get_num_threads(),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "auc": {
                    "float32": round(auc_float, 4),
                    "int8": round(auc_int8, 4),
                    "change": round(auc_int8 - auc_float, 4),
                },
                "p_nodule_abs_difference": {
                    "mean": round(float(difference.mean()), 5),
                    "max": round(float(difference.max()), 5),
                },
                "same_decision_at_0.5": round(float(np.mean((p_int8 > 0.5) == (p_float > 0.5))), 4),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
