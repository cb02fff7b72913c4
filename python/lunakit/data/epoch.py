"""An epoch number that DataLoader workers see change, persistent workers included.

Datasets whose order depends on the epoch keep the number in a one-element shared-memory
tensor: worker processes (forked or spawned by a DataLoader) share it with the main
process, so `set_epoch` in the main process reaches workers that were started in an
earlier epoch. Each process derives its order from (seed, epoch) when it notices a change.
"""

from __future__ import annotations

import torch


class SharedEpoch:
    """The current epoch, shared with DataLoader workers."""

    def __init__(self, epoch: int = 0):
        self._value = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._value[0] = int(epoch)

    def get(self) -> int:
        return int(self._value[0])

    def set(self, epoch: int) -> None:
        self._value[0] = int(epoch)
