"""Progress bars on stderr for the commands that analyze scans."""

from __future__ import annotations

import sys


class StageProgress:
    """A tqdm bar per pipeline stage, on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bars: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=f"{stage:>10}", unit="step", file=sys.stderr, leave=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
