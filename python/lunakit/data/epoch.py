"""An epoch number that DataLoader workers see change, persistent workers included.

Datasets whose order depends on the epoch keep the number in a one-element shared-memory
tensor: worker processes (forked or spawned by a DataLoader) share it with the main
process, so `set_epoch` in the main process reaches workers that were started in an
earlier epoch. Each process derives its order from (seed, epoch) when it notices a change.
"""

from __future__ import annotations

from typing import Any

import numpy as np
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


class EpochOrdered:
    """Mixin of the training datasets: a sample order per epoch, derived from (seed, epoch)
    in whichever process reads items, and rebuilt there when `set_epoch` changes the number.

    Subclasses call `_init_epoch_order()` in __init__ and define `_epoch_order(epoch)`.
    """

    def _init_epoch_order(self) -> None:
        self._epoch = SharedEpoch(0)
        self._order_epoch: int | None = None
        self._order = np.empty(0, dtype=np.int64)

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for this epoch (deterministic in (seed, epoch)); reaches running workers too."""
        self._epoch.set(epoch)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_order_epoch"], state["_order"] = None, np.empty(0, dtype=np.int64)  # rebuilt where used
        return state

    def _current_order(self) -> tuple[int, np.ndarray]:
        """(epoch, sample index at each position of that epoch)."""
        epoch = self._epoch.get()
        if epoch != self._order_epoch:
            self._order = self._epoch_order(epoch)
            self._order_epoch = epoch
        return epoch, self._order

    def _epoch_order(self, epoch: int) -> np.ndarray:
        raise NotImplementedError
