"""The timer of one operator call on a GPU, by CUDA events (CPU lanes are timed by the executor
itself: see cpu.measure_on_cpu_lane).

It returns the milliseconds of one call for every timed repeat (after the warm-up runs); the
caller takes the median, which shrugs off the odd preempted run on a shared machine. As in TVM's
``time_evaluator`` (number / repeat / min_repeat_ms), one repeat may run the call ``number``
times back to back and divide: a call of a few microseconds is then timed over a span long
enough that timer resolution and jitter do not dominate it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def time_cuda(
    call: Callable[[], object],
    warmup: int,
    repeats: int,
    device: torch.device,
    number: int = 1,
) -> list[float]:
    """Milliseconds per call on ``device``'s current stream, by CUDA events (device time, which
    includes launch gaps when the GPU waits for the host), after ``warmup`` untimed calls."""
    with torch.cuda.device(device):
        for _ in range(warmup):
            call()
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(repeats)
        ]
        for start, end in events:
            start.record()
            for _ in range(number):
                call()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / number for start, end in events]
