"""DataLoaders that hand whole batches of indices to the dataset.

A plain `DataLoader(dataset, batch_size=B)` asks a worker for B items and stacks them
(`default_collate`), which copies every crop once more into shared memory. The datasets of
this package also accept a list of indices and return the batch already stacked, its crops
cut straight into shared memory; `batch_loader` sets up a DataLoader that uses that path
(a `BatchSampler` as sampler, automatic batching off). Both loaders give the same batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from lunakit.data.volumes import DataError


def batch_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    sampler: Sampler[int] | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
    **loader_args: Any,
) -> DataLoader:
    """DataLoader yielding dataset[list of indices] batches; `sampler` (default: in order, e.g.
    a DistributedSampler) picks the indices, `loader_args` go to DataLoader (pin_memory,
    persistent_workers, ...)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    for name in ("batch_size", "shuffle", "batch_sampler", "collate_fn"):
        if name in loader_args:
            raise DataError(f"batch_loader sets {name} itself; pass a sampler instead")
    batches = BatchSampler(sampler if sampler is not None else SequentialSampler(dataset), batch_size, drop_last)
    return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=num_workers, **loader_args)


def in_worker() -> bool:
    """Whether this code runs in a DataLoader worker process."""
    return torch.utils.data.get_worker_info() is not None


def new_batch_tensor(shape: Sequence[int], dtype: torch.dtype = torch.float32, shared: bool = False) -> torch.Tensor:
    """An uninitialized tensor, allocated in shared memory when `shared` (a worker's batch then
    travels to the main process without being copied)."""
    shape = tuple(int(n) for n in shape)
    if not shared:
        return torch.empty(shape, dtype=dtype)
    nbytes = int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def stack_into_batch(tensors: Sequence[torch.Tensor], shared: bool, what: str) -> torch.Tensor:
    """torch.stack into a (shared) batch tensor; items of different shapes are an error."""
    first = tensors[0]
    for t in tensors[1:]:
        if t.shape != first.shape:
            raise DataError(f"cannot batch {what} of shapes {list(first.shape)} and {list(t.shape)} (use batch_size=1)")
    out = new_batch_tensor((len(tensors), *first.shape), first.dtype, shared)
    return torch.stack(list(tensors), out=out)
