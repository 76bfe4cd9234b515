"""Timers for one operator call: wall clock on CPU, CUDA events on a GPU.

Each returns the milliseconds of every timed repeat (after the warm-up runs); the caller takes
the median, which shrugs off the odd preempted run on a shared machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def time_cpu(call: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` runs of ``call`` by wall clock, after ``warmup`` runs."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def time_cuda(
    call: Callable[[], object], warmup: int, repeats: int, device: torch.device
) -> list[float]:
    """Milliseconds of ``repeats`` runs of ``call`` on ``device``'s current stream, by CUDA
    events (device time, not launch time), after ``warmup`` runs."""
    with torch.cuda.device(device):
        for _ in range(warmup):
            call()
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(repeats)
        ]
        for start, end in events:
            start.record()
            call()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
