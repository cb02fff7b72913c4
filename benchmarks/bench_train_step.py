"""What `--ema` costs and `--amp` saves a training step: the demo models' step (Adam, forward and
backward on a random batch) as `lunakit train` runs it (float32, no average), with the
weight-average update, and with the model under bfloat16 autocast (`--amp` on the CPU), timed
in turn in one process so a change in the machine's load hits all three.

  luna   LunaModel (the classifier, channels_last_3d), batch of 16 crops 32 x 48 x 48
  unet   UNetWrapper (the demo segmenter's arguments: 7 slices in, depth 3, wf 4), 16 windows 64 x 64

Prints one JSON object per model: seconds per step of each variant (the best of the repeats), the
ratios ema / plain (cost) and plain / amp (speed-up), and whether the CPU computes bfloat16
natively (without it, autocast emulates bfloat16 and is slower than float32).
Run: .venv/bin/python benchmarks/bench_train_step.py [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lunakit.models import LunaModel
from lunakit.models.unet import UNetWrapper
from lunakit.pipeline.precision import native_bf16
from lunakit.train.average import WeightAverage


def _model(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    if name == "luna":  # in channels_last_3d, as `lunakit train classify` runs it
        batch = torch.randn(16, 1, 32, 48, 48).contiguous(memory_format=torch.channels_last_3d)
        return LunaModel().to(memory_format=torch.channels_last_3d), batch
    unet = UNetWrapper(in_channels=7, n_classes=1, depth=3, wf=4, padding=True, batch_norm=True)
    return unet, torch.randn(16, 7, 64, 64)


def _steps(model: torch.nn.Module, batch: torch.Tensor, steps: int, variant: str, average: WeightAverage) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    started = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "amp"):
            out = model(batch)
        logits = out[0] if isinstance(out, tuple) else out  # LunaModel gives (logits, probabilities)
        loss = logits.float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if variant == "ema":
            average.update(model)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    variants = ("plain", "ema", "amp")
    for name in ("luna", "unet"):
        model, batch = _model(name)
        model.train()
        average = WeightAverage(model, 0.999)
        for variant in variants:  # warm-up
            _steps(model, batch, 2, variant, average)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for variant in variants:
                times[variant].append(_steps(model, batch, args.steps, variant, average))
        best = {v: min(t) for v, t in times.items()}
        print(
            json.dumps(
                {
                    "model": name,
                    "threads": torch.get_num_threads(),
                    "native_bf16": native_bf16(torch.device("cpu")),
                    "step_s": round(best["plain"], 4),
                    "step_with_ema_s": round(best["ema"], 4),
                    "step_with_amp_s": round(best["amp"], 4),
                    "ema_cost": round(best["ema"] / best["plain"], 4),
                    "amp_speedup": round(best["plain"] / best["amp"], 4),
                }
            )
        )


if __name__ == "__main__":
    main()
