"""Adaptive batching for the embedded server: requests with the same batch key wait at most
``timeout_s`` for company, up to ``max_batch`` of them, then run together on a worker thread.
(Under Ray Serve, ``ray.serve.batch`` does this instead: see ray_app.py.)"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .model import Result, ServedModel


class AdaptiveBatcher:
    """Groups requests by batch key and runs each group with ``model.run_batch``.

    Args:
        model: the ServedModel.
        max_batch: most requests in one batch (1 = no batching).
        timeout_s: the longest a request waits for others to join its batch.
        workers: batches run at once (the executor serves concurrent requests on its lanes).
        on_batch: called with (batch size, queue seconds of each request) as a batch starts.
    """

    def __init__(
        self,
        model: ServedModel,
        *,
        max_batch: int,
        timeout_s: float,
        workers: int = 2,
        on_batch: Callable[[int, list[float]], None] | None = None,
    ) -> None:
        if max_batch < 1 or timeout_s < 0 or workers < 1:
            raise ValueError("max_batch and workers must be >= 1 and timeout_s >= 0")
        self.model = model
        self.max_batch = max_batch if model.batch_axis is not None else 1
        self.timeout_s = timeout_s
        self.on_batch = on_batch
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "chrion-batch")
        self._pending: dict[tuple, list[tuple[Sequence[np.ndarray], asyncio.Future, float]]] = {}
        self._timers: dict[tuple, asyncio.TimerHandle] = {}

    async def submit(self, key: tuple, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The outputs of one request; raises what its model call raised."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        pending = self._pending.setdefault(key, [])
        pending.append((arrays, future, time.perf_counter()))
        if len(pending) >= self.max_batch or self.timeout_s == 0:
            self._flush(key)
        elif len(pending) == 1:
            self._timers[key] = loop.call_later(self.timeout_s, self._flush, key)
        return await future

    def _flush(self, key: tuple) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        items = self._pending.pop(key, [])
        if not items:
            return
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._pool, self._run, items)
        done.add_done_callback(lambda f: self._deliver(items, f))

    def _run(self, items: list) -> list[Result]:
        if self.on_batch is not None:
            now = time.perf_counter()
            self.on_batch(len(items), [now - queued for _, _, queued in items])
        return self.model.run_batch([arrays for arrays, _, _ in items])

    @staticmethod
    def _deliver(items: list, done: asyncio.Future) -> None:
        error = done.exception()
        results: list[Any] = [error] * len(items) if error is not None else done.result()
        for (_, future, _), result in zip(items, results, strict=True):
            if future.done():  # the client went away
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def close(self) -> None:
        """Wait for running batches, then stop the worker threads."""
        self._pool.shutdown(wait=True)
