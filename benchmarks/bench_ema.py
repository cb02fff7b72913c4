"""What `--ema` costs a training step: the demo models' step (Adam, forward and backward on a
random batch) with and without the weight-average update, timed alternately in one process.

  luna   LunaModel (the classifier, channels_last_3d), batch of 16 crops 32 x 48 x 48
  unet   UNetWrapper (the demo segmenter's arguments: 7 slices in, depth 3, wf 4), 16 windows 64 x 64

Prints one JSON object per model: seconds per step without and with the update, and the ratio.
Run: .venv/bin/python benchmarks/bench_ema.py [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lunakit.models import LunaModel
from lunakit.models.unet import UNetWrapper
from lunakit.train.average import WeightAverage


def _model(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    if name == "luna":  # in channels_last_3d, as `lunakit train classify` runs it
        return LunaModel().to(memory_format=torch.channels_last_3d), torch.randn(16, 1, 32, 48, 48)
    unet = UNetWrapper(in_channels=7, n_classes=1, depth=3, wf=4, padding=True, batch_norm=True)
    return unet, torch.randn(16, 7, 64, 64)


def _steps(model: torch.nn.Module, batch: torch.Tensor, steps: int, average: WeightAverage | None) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    started = time.perf_counter()
    for _ in range(steps):
        out = model(batch)
        logits = out[0] if isinstance(out, tuple) else out  # LunaModel gives (logits, probabilities)
        loss = logits.float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update(model)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    for name in ("luna", "unet"):
        model, batch = _model(name)
        model.train()
        average = WeightAverage(model, 0.999)
        _steps(model, batch, 2, None)  # warm-up
        plain, averaged = [], []
        for _ in range(args.repeats):  # alternate, so a change in the machine's load hits both
            plain.append(_steps(model, batch, args.steps, None))
            averaged.append(_steps(model, batch, args.steps, average))
        best_plain, best_avg = min(plain), min(averaged)
        print(
            json.dumps(
                {
                    "model": name,
                    "threads": torch.get_num_threads(),
                    "step_s": round(best_plain, 4),
                    "step_with_ema_s": round(best_avg, 4),
                    "ratio": round(best_avg / best_plain, 4),
                }
            )
        )


if __name__ == "__main__":
    main()
