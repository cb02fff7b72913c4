"""The dynamic batcher: many concurrent requests, one model call.

Requests put their crops on a bounded queue and await a future. One asyncio task takes the
first waiting request, then gathers more until the batch holds `max_batch` crops or
`max_wait_ms` has passed since that first request, concatenates them and runs the model once in
a worker thread (so the event loop keeps accepting and parsing requests meanwhile). The outputs
are cut back into each request's share and set on its future.

- A full queue refuses at once (`Overloaded` -> 503 with Retry-After): nobody waits unbounded.
- A request whose future was cancelled (its client went away) is skipped when the batch is
  formed, and its result is dropped if the model already ran it: the other requests never notice.
- A request larger than `max_batch` runs alone; the model function splits it as it needs.
- `close()` refuses new requests, finishes the queued ones, then stops the task.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from lunakit.errors import LunakitError
from lunakit.serve.metrics import MetricsRegistry

# (B, ...) float32 array -> outputs, each an array of length B or None; runs in the worker thread.
BatchFunction = Callable[[np.ndarray], Sequence[Optional[np.ndarray]]]


class Overloaded(LunakitError):
    """The queue is full; the client should retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BatcherClosed(LunakitError):
    """The server is shutting down and takes no new work."""


@dataclass(frozen=True)
class BatcherConfig:
    """How the batcher gathers requests."""

    max_batch: int = 64  # crops per model call
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_queue: int = 256  # waiting requests; one more is refused with 503

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise LunakitError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise LunakitError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_queue < 1:
            raise LunakitError(f"max_queue must be >= 1, got {self.max_queue}")


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a model call, and how big that call was."""

    outputs: tuple[Optional[np.ndarray], ...]
    batch_crops: int
    batch_requests: int


@dataclass
class _Pending:
    inputs: np.ndarray
    future: asyncio.Future


class DynamicBatcher:
    """Gathers `submit`ted arrays into batches for `run_batch` (see the module docstring)."""

    def __init__(
        self,
        run_batch: BatchFunction,
        config: BatcherConfig = BatcherConfig(),
        metrics: Optional[MetricsRegistry] = None,
        executor: Optional[concurrent.futures.Executor] = None,
    ) -> None:
        self.config = config
        self._run_batch = run_batch
        self._metrics = metrics
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lunakit-batch")
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wakeup: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._closing = False
        self.batches_run = 0
        self.largest_batch_requests = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        """Start the gathering task on the running event loop."""
        if self._task is not None:
            raise RuntimeError("batcher already started")
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="lunakit-batcher")

    def submit_nowait(self, inputs: np.ndarray) -> asyncio.Future:
        """Queue `inputs` (B, ...) and return the future of its BatchResult; never waits.

        Raises Overloaded when the queue is full and BatcherClosed when shutting down.
        Cancel the future to withdraw the request.
        """
        if self._closing or self._task is None or self._wakeup is None:
            raise BatcherClosed("the server is shutting down")
        if len(inputs) < 1:
            raise ValueError("submit: empty batch")
        if len(self._pending) >= self.config.max_queue:
            if self._metrics is not None:
                self._metrics.inc("lunakit_rejected_total")
            raise Overloaded(f"queue full ({self.config.max_queue} requests waiting); retry shortly")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(inputs, future))
        self._set_depth()
        self._wakeup.set()
        return future

    async def submit(self, inputs: np.ndarray) -> BatchResult:
        """Queue `inputs` and wait for its result (cancelling the wait withdraws the request)."""
        future = self.submit_nowait(inputs)
        try:
            return await future
        except asyncio.CancelledError:
            future.cancel()
            raise

    async def close(self) -> None:
        """Refuse new requests, run the queued ones, stop the task and the worker thread."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._own_executor:
            self._executor.shutdown(wait=True)

    # -- the gathering task --

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.set("lunakit_queue_depth", len(self._pending))

    def _next_live(self) -> Optional[_Pending]:
        """The oldest queued request whose client still waits (cancelled ones are dropped)."""
        while self._pending:
            item = self._pending[0]
            if not item.future.done():
                return item
            self._pending.popleft()
            if self._metrics is not None:
                self._metrics.inc("lunakit_cancelled_total")
        return None

    async def _wait_for_work(self, timeout: Optional[float]) -> None:
        assert self._wakeup is not None
        self._wakeup.clear()
        if self._pending or self._closing:
            return
        if timeout is None:
            await self._wakeup.wait()
            return
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        max_wait_s = self.config.max_wait_ms / 1000.0
        while True:
            first = self._next_live()
            if first is None:
                if self._closing:
                    break
                await self._wait_for_work(None)
                continue
            self._pending.popleft()
            batch, size = [first], len(first.inputs)
            deadline = loop.time() + max_wait_s
            while size < self.config.max_batch:
                item = self._next_live()
                if item is None:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or self._closing:
                        break
                    await self._wait_for_work(remaining)
                    continue
                if size + len(item.inputs) > self.config.max_batch:
                    break  # it starts the next batch
                self._pending.popleft()
                batch.append(item)
                size += len(item.inputs)
            self._set_depth()
            await self._execute(batch)

    async def _execute(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # clients may have left while we gathered
        if self._metrics is not None and len(live) < len(batch):
            self._metrics.inc("lunakit_cancelled_total", len(batch) - len(live))
        if not live:
            return
        inputs = live[0].inputs if len(live) == 1 else np.concatenate([p.inputs for p in live])
        started = time.perf_counter()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._run_batch, inputs)
        except Exception as exc:  # the model failed: every request of the batch gets the error
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        self.batches_run += 1
        self.largest_batch_requests = max(self.largest_batch_requests, len(live))
        if self._metrics is not None:
            self._metrics.observe("lunakit_batch_size_crops", len(inputs))
            self._metrics.observe("lunakit_batch_size_requests", len(live))
            self._metrics.observe("lunakit_batch_duration_seconds", elapsed)
            self._metrics.inc("lunakit_crops_total", len(inputs))
        offset = 0
        for p in live:
            count = len(p.inputs)
            if not p.future.done():
                share = tuple(None if out is None else out[offset : offset + count] for out in outputs)
                p.future.set_result(BatchResult(share, batch_crops=len(inputs), batch_requests=len(live)))
            offset += count


def split_calls(function: Callable[[Any], Any], inputs: np.ndarray, chunk: int) -> list[Any]:
    """function(inputs[k:k + chunk]) for each chunk: bounded memory for oversized requests."""
    return [function(inputs[start : start + chunk]) for start in range(0, len(inputs), chunk)]
