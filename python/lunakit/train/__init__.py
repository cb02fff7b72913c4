"""Training apps: `lunakit train classify | segment | malignancy`.

Each trains one of lunakit's models on a LUNA16 tree (real or phantom) through the volume
cache, on CPU or GPU, on one process or several under `torchrun`, and leaves a run folder
with best.pt (a lunakit checkpoint), state.pt (exact resume), metrics.jsonl, TensorBoard
logs and figures. See docs/training.md.

Python: `lunakit.train.loop.train(TrainConfig(...))`.
"""

from __future__ import annotations

from lunakit.train.config import TASKS, TrainConfig, TrainError

__all__ = ["TASKS", "TrainConfig", "TrainError"]
