"""Training on several processes (torchrun): process group, per-rank sampling, reductions.

Under `torchrun` the environment holds RANK, WORLD_SIZE and LOCAL_RANK; `setup` then joins
the process group (NCCL on GPUs, gloo on CPU) and every rank trains a DistributedDataParallel
copy of the model on its own share of each epoch. Without those variables everything here
degrades to a single process and no collective is called.

Sharing an epoch. The balanced datasets put one positive at every (ratio + 1)-th position;
a plain stride over positions would hand all positives to one rank when the stride and
the period share a factor. So positions are grouped in blocks of `period` (= ratio + 1)
and the blocks are dealt round-robin: every rank sees the same positive:negative pattern.
Training shares are padded (wrapping around the epoch) to the same length on every rank,
since DDP needs every rank to take the same number of steps; validation shares are not
padded, so each sample is counted exactly once when the sums are reduced.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from lunakit.train.config import TrainError

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank among world_size processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in _ENV)


def setup(device: str) -> DistContext:
    """Join the process group when started by torchrun; pick this rank's device.

    device: "cpu" or "cuda" (each rank then takes cuda:LOCAL_RANK).
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA GPU is available (torch.cuda.is_available() is False)")
    if not launched_by_torchrun():
        return DistContext(device="cuda:0" if device == "cuda" else "cpu")
    try:
        rank, world_size, local_rank = (int(os.environ[name]) for name in _ENV)
    except ValueError:
        raise TrainError(
            f"torchrun environment is malformed: {', '.join(f'{n}={os.environ[n]!r}' for n in _ENV)}"
        ) from None
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TrainError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        torch.cuda.set_device(local_rank)
        backend, rank_device = "nccl", f"cuda:{local_rank}"
    else:
        backend, rank_device = "gloo", "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=rank_device)


def teardown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def on_main(ctx: DistContext, work: Any) -> None:
    """Run work() on rank 0 only; every rank raises if it failed there (no rank waits forever)."""
    if not ctx.distributed:
        work()
        return
    message: list[Any] = [None]
    if ctx.is_main:
        try:
            work()
        except Exception as exc:  # passed on to the other ranks, then raised here
            message[0] = str(exc)
            dist.broadcast_object_list(message, src=0)
            raise
    dist.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise TrainError(f"rank 0 failed: {message[0]}")


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DistributedDataParallel around `model` when distributed (rank 0's weights win at start)."""
    if not ctx.distributed:
        return model
    device_ids = [ctx.local_rank] if ctx.device.startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sums(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Sum each value over the ranks (float64); identity on one process."""
    if not ctx.distributed or not values:
        return dict(values)
    keys = sorted(values)
    device = ctx.device if ctx.device.startswith("cuda") else "cpu"
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, tensor.cpu().tolist())}


def gather_arrays(arrays: dict[str, np.ndarray], ctx: DistContext) -> dict[str, np.ndarray]:
    """Concatenate each rank's arrays, in rank order (every rank gets the result)."""
    if not ctx.distributed:
        return {k: np.asarray(v) for k, v in arrays.items()}
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, {k: np.asarray(v) for k, v in arrays.items()})
    return {k: np.concatenate([part[k] for part in gathered]) for k in arrays}


@torch.no_grad()
def average_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Make the floating buffers (batch-norm running statistics) the mean over the ranks.

    DDP broadcasts rank 0's buffers before each forward, but every rank then updates them
    with its own batch; averaging at the end of an epoch leaves all ranks with one model,
    the same one rank 0 saves.
    """
    if not ctx.distributed:
        return
    for buffer in unwrap(model).buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(ctx.world_size)
        else:
            dist.broadcast(buffer, src=0)


class TrainShardSampler(Sampler[int]):
    """This rank's positions of a training epoch: blocks of `period` positions dealt round-robin,
    padded by wrapping around so that every rank gets the same number."""

    def __init__(self, length: int, rank: int, world_size: int, period: int = 1):
        if length < 1 or period < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad shard: length {length}, rank {rank} of {world_size}, period {period}")
        self.length, self.rank, self.world_size, self.period = length, rank, world_size, period
        stride = period * world_size
        total = math.ceil(length / stride) * stride
        positions = np.arange(total, dtype=np.int64)
        mine = positions[(positions // period) % world_size == rank]
        self._indices = (mine % length).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices)

    def __len__(self) -> int:
        return len(self._indices)


class EvalShardSampler(Sampler[int]):
    """Every world_size-th position starting at rank: each sample on exactly one rank."""

    def __init__(self, length: int, rank: int, world_size: int):
        self._indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices)

    def __len__(self) -> int:
        return len(self._indices)


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of at most batch_size indices that never mix groups (e.g. slices of scans of
    different sizes), in the order given."""

    def __init__(self, indices: Sequence[int], groups: Sequence[int], batch_size: int):
        self._batches: list[list[int]] = []
        current: list[int] = []
        current_group = None
        for index in indices:
            group = groups[index]
            if current and (group != current_group or len(current) == batch_size):
                self._batches.append(current)
                current = []
            current.append(int(index))
            current_group = group
        if current:
            self._batches.append(current)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)
