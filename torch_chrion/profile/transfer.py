"""Host <-> device copy costs: latency and bandwidth fitted to measured pinned copies.

A copy of n bytes is modelled as ``latency_ms + n / bytes_per_ms``; both come from a least-squares
line through the median times of non-blocking copies of a few sizes between pinned host memory
and the device, timed with CUDA events.
"""

from __future__ import annotations

import numpy as np
import torch

# 4 KiB .. 16 MiB: from latency-bound to bandwidth-bound
SIZES = (1 << 12, 1 << 16, 1 << 20, 1 << 22, 1 << 24)


def _copy_ms(src: torch.Tensor, dst: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src, non_blocking=True)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times[1:]))  # the first one warms up


def fit_line(nbytes: list[int], ms: list[float]) -> list[float]:
    """[latency_ms, bytes_per_ms] of the least-squares line ms = latency + bytes / bandwidth.

    Residuals are weighed relative to each time (weights 1/ms), so the 4 KiB copies count as
    much as the 16 MiB ones: latency comes from the small sizes, bandwidth from the large.
    """
    times = np.asarray(ms, float)
    slope, intercept = np.polyfit(
        np.asarray(nbytes, float), times, 1, w=1.0 / np.maximum(times, 1e-9)
    )
    slope = max(float(slope), 1e-12)  # a flat line (noise) would mean infinite bandwidth
    return [max(float(intercept), 0.0), 1.0 / slope]


def measure_transfers(device: torch.device, repeats: int = 20) -> dict[str, list[float]]:
    """{"cpu->cuda:i": [latency_ms, bytes_per_ms], "cuda:i->cpu": [...]} for ``device``."""
    lane = f"cuda:{device.index or 0}"
    up, down = [], []
    with torch.cuda.device(device):
        for size in SIZES:
            host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
            gpu = torch.empty(size, dtype=torch.uint8, device=device)
            up.append(_copy_ms(host, gpu, repeats))
            down.append(_copy_ms(gpu, host, repeats))
    return {f"cpu->{lane}": fit_line(list(SIZES), up), f"{lane}->cpu": fit_line(list(SIZES), down)}
