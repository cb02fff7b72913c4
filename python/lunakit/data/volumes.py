"""Per-process access to the cached volumes that the datasets read.

A DataLoader pickles its dataset into every worker. Memory maps must not travel that
way (numpy would pickle a memmap as a full in-memory copy of the scan), so this object
opens scans lazily, keeps them per process, and forgets them when pickled: each worker
opens its own maps on first use, and reading a crop is then a page-cache copy.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lunakit.errors import LunakitError


class DataError(LunakitError):
    """A dataset cannot be built from what it was given (missing cache, no positives, ...)."""


class VolumeSource:
    """Scans by series UID from a `lunakit.io.cache.VolumeCache` (or its directory), opened lazily."""

    def __init__(self, cache: Any):
        if isinstance(cache, (str, os.PathLike)):
            cache_dir = Path(cache)
            if not cache_dir.is_dir():
                raise DataError(f"{cache_dir}: cache directory does not exist (run `lunakit prepcache` first)")
            from lunakit.io.cache import VolumeCache

            cache = VolumeCache(cache_dir)
        if not callable(getattr(cache, "get", None)):
            raise DataError(f"cache must be a lunakit.io.cache.VolumeCache or a directory, got {type(cache).__name__}")
        self._cache = cache
        self._scans: dict[str, Any] = {}
        self._tensors: dict[str, torch.Tensor] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_scans"] = {}
        state["_tensors"] = {}
        return state

    @property
    def cache(self) -> Any:
        return self._cache

    def scan(self, series_uid: str) -> Any:
        """The cached CtScan (hu is a read-only int16 memmap [I, R, C])."""
        scan = self._scans.get(series_uid)
        if scan is None:
            scan = self._cache.get(series_uid)
            self._scans[series_uid] = scan
        return scan

    def hu(self, series_uid: str) -> np.ndarray:
        return self.scan(series_uid).hu

    def tensor(self, series_uid: str) -> torch.Tensor:
        """The int16 volume as a tensor sharing the memmap's memory (no copy; never written)."""
        tensor = self._tensors.get(series_uid)
        if tensor is None:
            hu = self.hu(series_uid)
            with warnings.catch_warnings():
                # torch warns that the read-only map is not writable; nothing writes to it.
                warnings.simplefilter("ignore", UserWarning)
                tensor = torch.from_numpy(hu) if isinstance(hu, np.ndarray) else torch.as_tensor(hu)
            self._tensors[series_uid] = tensor
        return tensor
