"""Lane strings ("cpu", "cpu:1", "cuda:0") and the device and thread count behind each."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..errors import OptionError
from ..settings import parse_lane as split_lane

# the executor's test-only asynchronous lane (never a user option: settings refuse it)
_FAKE_LANE = re.compile(r"^fake(?::\d+)?$")

# Intra-op threads of a CPU lane unless the user says otherwise. Batch-1 recurrent steps are
# barrier-bound, not FLOP-bound, and a lane whose OpenMP team has workers makes libgomp throttle
# every team in the process once its threads outnumber the cores: measured on the 2-core dev
# machine, the demo model took 16 ms on one 2-thread lane (and slowed eager PyTorch in the same
# process from 2 ms to 14 ms while the lane existed) against 2.9 ms on one 1-thread lane.
# Parallelism comes from more lanes instead (DESIGN: inter-operator parallelism).
DEFAULT_CPU_THREADS = 1


@dataclass(frozen=True)
class LaneSpec:
    """One lane: its name as the plan spells it, the device it runs on and, for CPU lanes, the
    number of intra-op threads its thread uses."""

    name: str
    device: torch.device
    threads: int

    @property
    def fake(self) -> bool:
        """A test-only lane ("fake:N"): CPU tensors, but memory apart from the host's and copies
        out of it that land later (Note [Chrion fake device] in csrc/executor/executor.cpp)."""
        return self.name.startswith("fake")

    @property
    def physical(self) -> str:
        """The memory the lane's tensors live in: every CPU lane shares "cpu"."""
        if self.fake:
            return "fake:" + (self.name.split(":")[1] if ":" in self.name else "0")
        return "cpu" if self.device.type == "cpu" else str(self.device)


def parse_lane(name: str) -> torch.device:
    """The device behind a lane string; OptionError for anything else.

    Args:
        name: "cpu", "cpu:N", "cuda" or "cuda:N". Several CPU lanes are distinct workers on the
            same host memory; "cuda" means "cuda:0". "fake:N" is the executor's test-only
            asynchronous device, which runs on the CPU.
    """
    if isinstance(name, str) and _FAKE_LANE.match(name):
        return torch.device("cpu")
    kind, index = split_lane(name)
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise OptionError(f"lane {name!r} needs CUDA, but torch.cuda.is_available() is False")
    if index >= torch.cuda.device_count():
        raise OptionError(f"lane {name!r}: there are only {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", index)


def lane_specs(names: Iterable[str], cpu_threads: int | None = None) -> list[LaneSpec]:
    """Sorted, distinct lanes with their devices and thread counts.

    Args:
        names: lane strings used by a placement.
        cpu_threads: intra-op threads of each CPU lane; default DEFAULT_CPU_THREADS.
    """
    unique = sorted(set(names))
    devices = {name: parse_lane(name) for name in unique}
    gpu_lanes: dict[torch.device, str] = {}
    for name, device in devices.items():
        if device.type == "cuda":
            other = gpu_lanes.setdefault(device, name)
            if other != name:
                raise OptionError(
                    f"lanes {other!r} and {name!r} are both on {device}: use one lane per GPU"
                    " (its steps run in order on the lane's stream)"
                )
    if cpu_threads is None:
        cpu_threads = DEFAULT_CPU_THREADS
    elif not isinstance(cpu_threads, int) or isinstance(cpu_threads, bool) or cpu_threads < 1:
        raise OptionError(f"cpu_threads must be a positive int, got {cpu_threads!r}")
    return [
        LaneSpec(name, devices[name], cpu_threads if devices[name].type == "cpu" else 1)
        for name in unique
    ]
