"""ChrionSettings: every option of torch_chrion, documented once, validated once.

``load_onnx(...)`` keyword arguments, ``torch.compile(..., options={...})`` and the CLI flags all
become one frozen ChrionSettings; a new value is made with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from typing import Any

from .errors import OptionError

OBJECTIVES = ("latency", "memory")
GRANULARITIES = ("op", "layer")
_DEVICE = re.compile(r"^(cpu|cuda)(:\d+)?$")


@dataclasses.dataclass(frozen=True)
class ChrionSettings:
    """Options of a torch_chrion compilation.

    Args:
        objective: "latency" minimises predicted latency (makespan); "memory" minimises the bytes
            resident on the accelerator (weights plus peak activations) while the predicted
            latency stays within ``slo_ms``.
        slo_ms: latency objective in milliseconds for one request. Required by "memory"; with
            "latency" a plan predicted above it is reported (and refused when ``strict``).
        devices: lanes to place operators on, such as ("cpu", "cuda:0") or ("cpu:0", "cpu:1").
            None means "cpu" plus "cuda:0" when CUDA is available.
        granularity: "op" keeps every recurrent operator whole; "layer" splits multi-layer and
            bidirectional recurrent operators into one node per layer and direction.
        seq_chunks: with "layer", also split each sequence into this many chunks (the state is
            handed from chunk to chunk), giving the layer x chunk wavefront. 1 = no chunking.
        cpu_threads: intra-op threads of each CPU lane; None means 1 (batch-1 recurrent steps
            gain little from more, and more lanes give parallelism instead; see
            runtime/lanes.py).
        cache_dir: where profiles are cached; None means $TORCH_CHRION_CACHE or
            ~/.cache/torch_chrion.
        strict: raise InfeasiblePlanError when no plan meets ``slo_ms``, instead of running the
            best plan found and reporting it.
        profile_warmup: untimed runs of each node before timing it.
        profile_repeats: timed runs of each node; the median is its cost.
        profile_budget_s: upper bound on the time spent profiling one model.
    """

    objective: str = "latency"
    slo_ms: float | None = None
    devices: tuple[str, ...] | None = None
    granularity: str = "layer"
    seq_chunks: int = 1
    cpu_threads: int | None = None
    cache_dir: str | None = None
    strict: bool = False
    profile_warmup: int = 3
    profile_repeats: int = 10
    profile_budget_s: float = 30.0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise OptionError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.slo_ms is not None and not (
            isinstance(self.slo_ms, (int, float)) and self.slo_ms > 0 and math.isfinite(self.slo_ms)
        ):
            raise OptionError(
                f"slo_ms must be a positive number of milliseconds, got {self.slo_ms!r}"
            )
        if self.objective == "memory" and self.slo_ms is None:
            raise OptionError('objective="memory" needs slo_ms: the latency the plan must meet')
        if self.devices is not None:
            if isinstance(self.devices, str) or not all(isinstance(d, str) for d in self.devices):
                raise OptionError(f"devices must be a sequence of strings, got {self.devices!r}")
            object.__setattr__(self, "devices", tuple(self.devices))
            bad = [d for d in self.devices if not _DEVICE.match(d)]
            if bad or not self.devices:
                raise OptionError(
                    f"devices must look like 'cpu', 'cpu:1' or 'cuda:0'; got {list(self.devices)!r}"
                )
            if len(set(self.devices)) != len(self.devices):
                raise OptionError(f"devices lists a lane twice: {list(self.devices)!r}")
        if self.granularity not in GRANULARITIES:
            raise OptionError(
                f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}"
            )
        for name in ("seq_chunks", "profile_warmup", "profile_repeats"):
            value = getattr(self, name)
            low = 0 if name == "profile_warmup" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise OptionError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.cpu_threads is not None and (
            not isinstance(self.cpu_threads, int) or self.cpu_threads < 1
        ):
            raise OptionError(
                f"cpu_threads must be a positive integer or None, got {self.cpu_threads!r}"
            )
        if self.profile_budget_s <= 0:
            raise OptionError(f"profile_budget_s must be positive, got {self.profile_budget_s!r}")

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any] | None = None, **overrides: Any
    ) -> ChrionSettings:
        """Settings from a user's options dict; an unknown key is an error naming the closest one."""
        merged = {**(options or {}), **{k: v for k, v in overrides.items() if v is not None}}
        known = [f.name for f in dataclasses.fields(cls)]
        for key in merged:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = (
                    f"; did you mean {close[0]!r}?"
                    if close
                    else f"; known options: {', '.join(known)}"
                )
                raise OptionError(f"unknown torch_chrion option {key!r}{hint}")
        return cls(**merged)

    def plan_key(self) -> dict[str, Any]:
        """The fields a saved plan depends on: a plan made under other values is stale."""
        return {name: getattr(self, name) for name in _PLAN_INVARIANT}


# Settings that change the graph or the placement; the others only change how it is measured/run.
_PLAN_INVARIANT = ("objective", "slo_ms", "devices", "granularity", "seq_chunks")
