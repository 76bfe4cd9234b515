"""What the lanes are: which physical device each names, whether it is here, and its name."""

from __future__ import annotations

import functools
import platform

import torch

from ..settings import parse_lane

__all__ = ["cpu_name", "cuda_present", "lane_device_name", "parse_lane"]


def cuda_present(index: int) -> bool:
    """Whether CUDA device ``index`` exists on this machine."""
    return torch.cuda.is_available() and index < torch.cuda.device_count()


@functools.cache
def cpu_name() -> str:
    """The CPU model, e.g. "AMD EPYC 7B13"; what a CPU profile is keyed by."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def lane_device_name(kind: str, index: int, threads: int | None = None) -> str:
    """The hardware name of a lane: the CPU model and its thread count, or the GPU's name."""
    if kind == "cpu":
        return f"{cpu_name()} x{threads} threads"
    return torch.cuda.get_device_name(index)
