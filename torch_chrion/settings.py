"""ChrionSettings: every option of torch_chrion, documented once, validated once.

``load_onnx(...)`` keyword arguments, ``torch.compile(..., options={...})`` and the CLI flags all
become one frozen ChrionSettings; a new value is made with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import OptionError

OBJECTIVES = ("latency", "memory")
GRANULARITIES = ("auto", "op", "layer")
RECURRENT_DTYPES = ("float32", "bfloat16")
# the options that take one of a few words
OPTION_CHOICES = {
    "objective": OBJECTIVES,
    "granularity": GRANULARITIES,
    "recurrent_dtype": RECURRENT_DTYPES,
}
# A lane: "cpu", "cpu:N", "cuda" (= "cuda:0") or "cuda:N". The one spelling of it.
LANE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_lane(lane: str) -> tuple[str, int]:
    """("cpu" | "cuda", index) of a lane string; an OptionError for anything else."""
    match = LANE.match(lane) if isinstance(lane, str) else None
    if match is None:
        raise OptionError(f"unknown lane {lane!r}: a lane looks like 'cpu', 'cpu:1' or 'cuda:0'")
    return match.group(1), int(match.group(2) or 0)


def closest(word: object, choices: Iterable[str]) -> str:
    """ "; did you mean 'x'?" for the choice closest to ``word``, or the list of choices."""
    choices = list(choices)
    close = difflib.get_close_matches(str(word), choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; choose from {', '.join(choices)}"


def _check_names(cls: type, names: Iterable[str]) -> None:
    known = [f.name for f in dataclasses.fields(cls)]
    for name in names:
        if name not in known:
            raise OptionError(f"unknown torch_chrion option {name!r}{closest(name, known)}")


# Note [Auto granularity]
# On CPU lanes alone a recurrent operator over a batch of 4 or more runs best whole. Placed
# wide, the kernel splits a bidirectional layer by direction over the lanes' threads, lets the
# faster thread take the slower one's last blocks (Note [Two-ended slices] in
# csrc/kernels/recurrent_schedule.cpp) and writes both directions into the output in place.
# Split per layer and direction, each direction is a node on its own lane: nothing balances two
# lanes whose cores drift apart (a trace here: one direction of a layer 1.53 ms on cpu:0, the
# other 2.09 ms on cpu:1), and every layer adds a cat and slices. Whole over split, two CPU
# lanes, one process, interleaved: 0.85-0.96x the time at batch 8-32 (BiGRU 3x256 batch 16,
# BiRNN 2x256 and BiLSTM 2x128 batch 8, BiGRU 1x512 batch 32) and 0.95x on the CRDNN of
# bench/crdnn.py (batch 4); on one lane of two threads the split was 1.8x slower (each
# direction split by hidden units, one synchronisation per step). At batch 1 whole and split
# tied (1.04x on a BiLSTM 2x128, within noise on the demo), and split is the safer: whole, the
# two directions run at once only if the profile finds the node faster wide, which a profile
# taken under load may not (the demo's layers then stayed on one lane, predicted 2.11 ms
# against 1.57-1.84 from quiet profiles); split, they run on two lanes whatever the profile
# says. So "auto" keeps whole from batch 4 (graph/passes/split_recurrent.py; the batch of the
# inputs a graph is captured for, the first call's for a shape-generic Dynamo graph) and splits
# below. With an accelerator among the lanes the split lets the directions and the layers run
# on different devices, and sequence chunks need it: "auto" is "layer" there. A saved plan
# fixes its graph's nodes, so "auto" takes the plan's granularity.
@dataclasses.dataclass(frozen=True)
class ChrionSettings:
    """Options of a torch_chrion compilation.

    Args:
        objective: "latency" minimises predicted latency (makespan); "memory" minimises the bytes
            resident on the accelerator (weights plus peak activations) while the predicted
            latency stays within ``slo_ms``.
        slo_ms: latency objective in milliseconds for one request. Required by "memory"; with
            "latency" a plan predicted above it is logged as a warning (and refused when
            ``strict``).
        devices: lanes to place operators on, such as ("cpu", "cuda:0") or ("cpu:0", "cpu:1").
            None means "cpu" and "cuda:0" when CUDA is available, else "cpu:0" and "cpu:1" (one
            "cpu" on a one-core machine).
        granularity: "op" keeps every recurrent operator whole; "layer" splits multi-layer and
            bidirectional recurrent operators into one node per layer and direction; "auto"
            (the default): where every lane is a CPU lane and seq_chunks is 1, "op" for an
            operator over a batch of 4 or more and "layer" for a smaller one, else "layer"
            throughout; with a plan given, the plan's (Note [Auto granularity]).
        seq_chunks: with "layer", also split each sequence into this many chunks (the state is
            handed from chunk to chunk), giving the layer x chunk wavefront. 1 = no chunking.
        cpu_threads: intra-op threads of each CPU lane; None means 1 (batch-1 recurrent steps
            gain little from more, and more lanes give parallelism instead; see
            runtime/lanes.py).
        cache_dir: where profiles are cached; None means $TORCH_CHRION_CACHE/profiles, by
            default ~/.cache/torch_chrion/profiles.
        strict: raise InfeasiblePlanError when no plan meets ``slo_ms``, instead of running the
            best plan found and reporting it.
        profile_warmup: untimed runs of each node before timing it.
        profile_repeats: timed runs of each node; the median is its cost.
        profile_budget_s: upper bound on the time spent profiling one model.
        recurrent_dtype: "float32", or "bfloat16" (opt-in): each recurrent layer's W_hh is held
            in bfloat16 and the CPU kernel rounds the hidden state to bfloat16 for that product
            only, accumulating in float32 (half the weight bytes a time step streams); W_ih,
            biases, gates and cell state stay float32. Outputs then differ from float32 by up to
            about 1e-2 (README). CUDA lanes run the same rounded weights in float32.
        cuda_graphs: capture each run of a CUDA lane's nodes (consecutive in plan order, reading
            nothing from other lanes after its first node) into a CUDA graph, captured on the
            second call of an input shape and replayed from then on, so a batch-1 recurrent
            layer on the GPU pays no launch per time step (Note [Device graph segments] in
            runtime/device_graphs.py). Each segment holds its inputs' copies and its
            intermediates between calls.
    """

    objective: str = "latency"
    slo_ms: float | None = None
    devices: tuple[str, ...] | None = None
    granularity: str = "auto"
    seq_chunks: int = 1
    cpu_threads: int | None = None
    cache_dir: str | None = None
    strict: bool = False
    profile_warmup: int = 3
    profile_repeats: int = 10
    profile_budget_s: float = 30.0
    recurrent_dtype: str = "float32"
    cuda_graphs: bool = True

    def __new__(cls, *args: Any, **kwargs: Any) -> ChrionSettings:
        # before the generated __init__, so a misspelt keyword gets the same OptionError (with
        # its suggestion) as from_options, not a bare TypeError
        _check_names(cls, kwargs)
        if len(args) > len(dataclasses.fields(cls)):
            raise OptionError(f"ChrionSettings takes at most {len(dataclasses.fields(cls))} values")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        for name, choices in OPTION_CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise OptionError(
                    f"{name} must be one of {choices}, got {value!r}{closest(value, choices)}"
                )
        for name in ("slo_ms", "profile_budget_s"):
            value = getattr(self, name)
            if not (value is None and name == "slo_ms") and not (
                _is_number(value) and value > 0 and math.isfinite(value)
            ):
                raise OptionError(f"{name} must be a positive, finite number, got {value!r}")
        if self.objective == "memory" and self.slo_ms is None:
            raise OptionError('objective="memory" needs slo_ms: the latency the plan must meet')
        if self.devices is not None:
            if isinstance(self.devices, str) or not all(isinstance(d, str) for d in self.devices):
                raise OptionError(
                    f"devices must be a sequence of lane names such as ['cpu', 'cuda:0'], "
                    f"got {self.devices!r}"
                )
            object.__setattr__(self, "devices", tuple(self.devices))
            for lane in self.devices:
                parse_lane(lane)
            if not self.devices:
                raise OptionError("devices must name at least one lane")
            if len(set(self.devices)) != len(self.devices):
                raise OptionError(f"devices lists a lane twice: {list(self.devices)!r}")
        for name, low in (("seq_chunks", 1), ("profile_warmup", 0), ("profile_repeats", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise OptionError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.cpu_threads is not None and not (
            _is_int(self.cpu_threads) and self.cpu_threads >= 1
        ):
            raise OptionError(
                f"cpu_threads must be a positive integer or None, got {self.cpu_threads!r}"
            )
        if isinstance(self.cache_dir, os.PathLike):
            object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))
        if self.cache_dir is not None and not isinstance(self.cache_dir, str):
            raise OptionError(f"cache_dir must be a path or None, got {self.cache_dir!r}")
        for name in ("strict", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any] | None = None, **overrides: Any
    ) -> ChrionSettings:
        """Settings from a user's options dict; an unknown key is an error naming the closest one."""
        merged = {**(options or {}), **{k: v for k, v in overrides.items() if v is not None}}
        _check_names(cls, merged)
        return cls(**merged)

    def resolve_granularity(
        self, devices: Iterable[str], recorded: str | None = None
    ) -> ChrionSettings:
        """These settings with "auto" granularity resolved for ``devices``: ``recorded`` (the
        granularity of a saved plan about to run) when given, else "auto" itself where every
        lane is a CPU lane and ``seq_chunks`` is 1 (split_recurrent then keeps an operator over
        a batch of 4 or more whole), else "layer" (Note [Auto granularity])."""
        if self.granularity != "auto":
            return self
        if recorded is not None:
            return dataclasses.replace(self, granularity=recorded)
        cpu_only = all(parse_lane(lane)[0] == "cpu" for lane in devices)
        return (
            self
            if cpu_only and self.seq_chunks == 1
            else dataclasses.replace(self, granularity="layer")
        )

    def plan_key(self) -> dict[str, Any]:
        """The fields a saved plan depends on: a plan made under other values is stale."""
        return {name: getattr(self, name) for name in _PLAN_INVARIANT}


# Settings that change the graph or the placement; the others only change how it is measured/run.
# cpu_threads: a lane's thread count changes every CPU cost, hence the placement.
# recurrent_dtype: the graph's recurrent weights, and the CPU costs.
_PLAN_INVARIANT = (
    "objective",
    "slo_ms",
    "devices",
    "granularity",
    "seq_chunks",
    "cpu_threads",
    "recurrent_dtype",
)


def option_docs() -> dict[str, str]:
    """Each option's documentation, one line, read from ChrionSettings' docstring (the one
    place options are documented), for the CLI's flags."""
    docs: dict[str, str] = {}
    lines = inspect.cleandoc(ChrionSettings.__doc__ or "").splitlines()
    for line in lines[lines.index("Args:") + 1 :]:
        if line.startswith("    ") and not line.startswith("     "):
            name, _, text = line.strip().partition(": ")
            docs[name] = text
        elif line.startswith("     "):
            docs[name] += " " + line.strip()
        elif line.strip():
            break
    return docs


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
