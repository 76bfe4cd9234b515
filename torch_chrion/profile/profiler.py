"""profile_graph: the cost of every schedulable node of an aten graph on every lane.

How: the graph runs once with an ``fx.Interpreter`` that keeps every value, so each node can then
be called alone on its real inputs. Each physical device is measured once: all CPU lanes of one
intra-op thread count share one CPU measurement (wall clock), each CUDA lane gets its own (CUDA
events, inputs and weights on the device) plus the pinned host<->device copy costs. Each device's
measurement is cached on disk (cache.py). A lane whose device is not on this machine comes from a
profile recorded where it is; with none, profiling refuses rather than invent a number.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import fx
from tqdm.auto import tqdm

from .._extension import cache_root
from ..errors import ChrionError, OptionError, PlanError
from ..graph import graph_hash
from ..graph.nodes import node_callable, schedulable_nodes
from ..runtime.lanes import DEFAULT_CPU_THREADS
from ..settings import ChrionSettings
from . import timing
from .cache import Expected, ProfileCache, cache_key
from .devices import cuda_present, lane_device_name, parse_lane
from .profile import Profile
from .transfer import measure_transfers

log = logging.getLogger(__name__)

# fewer repeats than this and the median is no longer worth the name
_MIN_REPEATS = 3
# a repeat runs a fast node this long (back-to-back calls), so µs-scale jitter averages out ...
MIN_REPEAT_MS = 0.5
# ... but never more than this many calls
MAX_NUMBER = 1000
# at least this many nodes to measure before a progress bar is worth drawing
_PROGRESS_MIN_NODES = 8
# seconds each device runs the whole graph before its nodes are timed (at most 10% of the budget)
WARMUP_S = 1.0
# seconds a profile must run before its progress bar appears ("more than a moment")
PROGRESS_DELAY_S = 1.0


class _KeepValues(fx.Interpreter):
    """Runs the graph and keeps every node's value (no freeing after last use)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)


def _node_values(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> dict[fx.Node, object]:
    interpreter = _KeepValues(gm)
    with torch.no_grad():
        interpreter.run(*inputs)
    return interpreter.env


class _Budget:
    """Splits the time budget over the measurements still to make, cutting runs to fit."""

    def __init__(self, seconds: float, measurements: int, warmup: int, repeats: int) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.left = max(measurements, 1)
        self.warmup, self.repeats = warmup, repeats
        self.fewest = repeats

    def plan(self, first_ms: float) -> tuple[int, int, int]:
        """(warm-up calls, repeats, calls per repeat) for a node whose first call took
        ``first_ms``: each repeat lasts about MIN_REPEAT_MS; when the node's share of the budget
        is short, calls per repeat go first (down to 1), then repeats (down to 3), then
        warm-ups (down to 1)."""
        share_ms = max(self.deadline - time.monotonic(), 0.0) * 1e3 / self.left
        self.left = max(self.left - 1, 1)
        first_ms = max(first_ms, 1e-6)
        affordable = share_ms / first_ms  # calls this node may make
        warmup, repeats = self.warmup, self.repeats
        number = max(1, min(MAX_NUMBER, math.ceil(MIN_REPEAT_MS / first_ms)))
        if warmup + repeats * number > affordable:
            number = max(1, int((affordable - warmup) // repeats))
        if warmup + repeats * number > affordable:
            repeats = max(_MIN_REPEATS, min(repeats, int(affordable) - warmup))
            warmup = min(warmup, max(1 if warmup else 0, int(affordable) - repeats))
        self.fewest = min(self.fewest, repeats)
        return warmup, repeats, number


def _progress(total: int, desc: str, unit: str) -> tqdm:
    """A progress bar of ``total`` steps called ``unit`` (what one step is), on a terminal only
    and only for a slow profile; TORCH_CHRION_NO_PROGRESS=1 turns it off."""
    quiet = os.environ.get("TORCH_CHRION_NO_PROGRESS") == "1" or total < _PROGRESS_MIN_NODES
    # disable=None: tqdm's own test, off when stderr is not a terminal; delay: only when slow
    return tqdm(
        total=total, desc=desc, unit=unit, delay=PROGRESS_DELAY_S, disable=True if quiet else None
    )


def _to_device(value: object, device: torch.device) -> object:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _clone_tensors(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_tensors(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone_tensors(v) for k, v in value.items()}
    return value


def _node_call(
    gm: fx.GraphModule, node: fx.Node, values: dict[fx.Node, object]
) -> Callable[[], object]:
    """A no-argument call of ``node`` on its recorded inputs."""
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), values.__getitem__)
    schema = getattr(node.target, "_schema", None)
    if schema is not None and schema.is_mutable:
        args, kwargs = _clone_tensors(
            (args, kwargs)
        )  # an in-place op must not touch the shared values
    target = node_callable(gm, node)

    def call() -> object:
        return target(*args, **kwargs)

    return call


def _measure_on_cuda(
    gm: fx.GraphModule,
    values: dict[fx.Node, object],
    nodes: list[fx.Node],
    device: torch.device,
    budget: _Budget,
    desc: str,
) -> tuple[dict[str, float], list[str]]:
    """Median ms of each node on a CUDA ``device`` by CUDA events; a node that fails there
    costs ``inf``.

    Per node, as TVM's time_evaluator does: one untimed call (lazy initialisation, and the check
    that the node runs there at all), one timed call that sizes the node's share of the budget
    and its calls per repeat, the remaining warm-ups, then the repeats back to back.
    """
    timer = functools.partial(_time_cuda, device=device)
    values = {node: _to_device(value, device) for node, value in values.items()}
    costs: dict[str, float] = {}
    notes: list[str] = []
    calls = {node: _node_call(gm, node, values) for node in nodes}
    with _progress(len(nodes), desc, " node") as bar, torch.no_grad():
        _warm_up(list(calls.values()), device, min(WARMUP_S, 0.1 * budget.seconds))
        for node, call in calls.items():
            try:
                timer(call, 1, 0)
                (first,) = timer(call, 0, 1)
                warmup, repeats, number = budget.plan(first)
                times = timer(call, max(warmup - 2, 0), repeats, number)
                costs[node.name] = statistics.median(times)
            except (RuntimeError, NotImplementedError) as exc:
                costs[node.name] = math.inf
                notes.append(f"{node.name} cannot run on {device}: {str(exc).splitlines()[0]}")
            bar.update()
    return costs, notes


def _measure_on_cpu_lane(
    gm: fx.GraphModule,
    inputs: tuple,
    nodes: list[fx.Node],
    threads: int,
    warmup: int,
    repeats: int,
    budget_s: float,
    desc: str,
) -> tuple[dict[str, float], list[str]]:
    """Median ms of each node run by the executor itself on a CPU lane with ``threads`` threads,
    over ``repeats`` whole-graph runs after ``warmup`` runs (and at least a warm-up period).

    Why not time the ops from Python: a lane is a worker thread with its own intra-op pool, and
    the same operator costs measurably more there than on the main thread (an LSTM layer here:
    0.5 ms on the main thread, 1.4-1.8 ms on a worker thread with the same thread count), so a
    profile taken on the main thread predicted half the latency the executor then took. As TVM's
    debug executor does, the profile times the calls the lane will make: the whole graph runs on
    one traced lane, and each node's cost is the median of its steps' durations.
    """
    from ..runtime import PlacedGraph

    placed = PlacedGraph(gm, {n.name: "cpu" for n in nodes}, cpu_threads=threads)
    durations: dict[str, list[float]] = {n.name: [] for n in nodes}
    notes: list[str] = []
    try:
        with torch.no_grad(), _progress(repeats, desc, " graph run") as bar:
            stop = time.monotonic() + budget_s
            deadline = time.monotonic() + min(WARMUP_S, 0.1 * budget_s)
            for run in itertools.count():
                if run >= warmup and time.monotonic() >= deadline:
                    break
                placed(*inputs)
            placed.enable_trace(True)
            for run in range(repeats):
                placed(*inputs)
                for event in placed.last_trace():
                    if event.node in durations:
                        durations[event.node].append((event.end_us - event.start_us) / 1e3)
                bar.update()
                if time.monotonic() > stop and _MIN_REPEATS <= run + 1 < repeats:
                    notes.append(
                        f"cpu: the {budget_s:g} s profile budget cut repeats from {repeats} "
                        f"to {run + 1}"
                    )
                    log.warning(notes[-1])
                    break
    finally:
        placed.stop()
    missing = [name for name, times in durations.items() if not times]
    if missing:
        raise ChrionError(f"the executor's trace has no steps for nodes {missing[:5]}")
    return {name: statistics.median(times) for name, times in durations.items()}, notes


def _warm_up(calls: list[Callable[[], object]], device: torch.device, seconds: float) -> None:
    """Run the graph's nodes in order for ``seconds`` (at least once) before timing any.

    Measured on a 16-core VM: without it, the first node timings of a fresh process came out up
    to 2x slow (thread pool start, page faults of first allocations, clocks ramping up).
    """
    deadline = time.monotonic() + seconds
    while True:
        for call in calls:
            try:
                call()
            except (RuntimeError, NotImplementedError):
                pass  # reported when the node itself is measured
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if time.monotonic() >= deadline:
            return


def _time_cuda(
    call: Callable[[], object], warmup: int, repeats: int, number: int = 1, *, device: torch.device
) -> list[float]:
    return timing.time_cuda(call, warmup, repeats, device, number)


def _recorded_profile(recorded: Profile | str | os.PathLike | None) -> Profile | None:
    if recorded is None or isinstance(recorded, Profile):
        return recorded
    return Profile.load(recorded)


def _from_recorded(
    recorded: Profile | None,
    lane: str,
    ghash: str,
    shapes: list[list[int]],
    nodes: list[str],
) -> Profile:
    """The measurements of an absent lane, taken from a profile recorded where it exists."""
    if recorded is None or lane not in recorded.devices:
        raise ChrionError(
            f"no {lane} device here and no recorded profile for {lane}; record one with "
            f"`chrion profile` on the target machine and pass it as the recorded profile"
        )
    if recorded.graph_hash != ghash or recorded.input_shapes != shapes:
        raise PlanError(
            f"the recorded profile for {lane} was made for graph {recorded.graph_hash} with "
            f"inputs {recorded.input_shapes}, not this graph ({ghash}, inputs {shapes}); "
            "record it again for this model, granularity and input shapes"
        )
    missing = [n for n in nodes if lane not in recorded.node_ms.get(n, {})]
    if missing:
        raise PlanError(f"the recorded profile has no {lane} cost for nodes {missing[:5]}")
    transfer = {}
    for key, value in recorded.transfer.items():
        src, _, dst = key.partition("->")
        if dst == lane and src.startswith("cpu"):
            transfer.setdefault(f"cpu->{lane}", value)
        if src == lane and dst.startswith("cpu"):
            transfer.setdefault(f"{lane}->cpu", value)
    if len(transfer) != 2:
        raise PlanError(f"the recorded profile has no host<->{lane} transfer costs")
    return Profile(
        devices=[lane],
        device_names={lane: recorded.device_names.get(lane, lane)},
        node_ms={n: {lane: recorded.node_ms[n][lane]} for n in nodes},
        transfer=transfer,
        graph_hash=ghash,
        input_shapes=shapes,
        torch_version=recorded.torch_version,
        notes=[f"{lane}: recorded on another machine (torch {recorded.torch_version})"],
    )


def profile_graph(
    gm: fx.GraphModule,
    example_inputs: Sequence[torch.Tensor],
    devices: Sequence[str],
    *,
    settings: ChrionSettings | None = None,
    cache_dir: str | os.PathLike | None = None,
    recorded: Profile | str | os.PathLike | None = None,
) -> Profile:
    """Measure (or load from the cache) what each node of ``gm`` costs on each lane.

    Args:
        gm: an aten graph from ``torch_chrion.graph.capture``.
        example_inputs: the inputs (real values, on CPU) of the shapes ``gm`` was captured for.
        devices: the lanes, e.g. ["cpu"], ["cpu:0", "cpu:1"] or ["cpu", "cuda:0"].
        settings: warm-up runs, repeats, time budget, CPU threads and cache dir (defaults if
            None).
        cache_dir: overrides ``settings.cache_dir``; default ``$TORCH_CHRION_CACHE/profiles``.
        recorded: a Profile (or the path of one) recorded on another machine, used for the lanes
            whose device is not here (e.g. cuda:0 on a machine without a GPU).

    Returns:
        The Profile of every schedulable node on every lane, with host<->device transfer costs.

    Raises:
        OptionError: a malformed lane.
        ChrionError: a lane whose device is absent here, with no recorded profile for it.
        PlanError: a recorded profile that belongs to another graph or lacks that lane.
    """
    settings = settings or ChrionSettings()
    lanes = list(devices)
    parsed = {lane: parse_lane(lane) for lane in lanes}
    if not lanes or len(set(lanes)) != len(lanes):
        raise OptionError(f"devices must name each lane once, got {lanes}")
    inputs = tuple(example_inputs)
    ghash = graph_hash(gm)
    # a size input (a SymInt of a torch.compile graph) is recorded by its value
    shapes = [list(x.shape) if isinstance(x, torch.Tensor) else [x] for x in inputs]
    signature = [
        [list(x.shape), str(x.dtype)] if isinstance(x, torch.Tensor) else [[x], type(x).__name__]
        for x in inputs
    ]
    version = torch.__version__
    nodes = schedulable_nodes(gm)
    names = [n.name for n in nodes]
    directory = Path(cache_dir or settings.cache_dir or cache_root() / "profiles")
    cache = ProfileCache(directory)
    recorded_profile = _recorded_profile(recorded)

    cpu_lanes = [lane for lane in lanes if parsed[lane][0] == "cpu"]
    cuda_lanes = [lane for lane in lanes if parsed[lane][0] == "cuda"]
    threads = settings.cpu_threads or DEFAULT_CPU_THREADS

    # what each physical device ("cpu" or "cuda:i") needs: a cached, measured or recorded profile
    groups: dict[str, tuple[str, str]] = {}  # group -> (device name, cache key)
    if cpu_lanes:
        name = lane_device_name("cpu", 0, threads)
        groups["cpu"] = (name, cache_key(ghash, signature, name, version))
    for lane in cuda_lanes:
        index = parsed[lane][1]
        if cuda_present(index):
            name = lane_device_name("cuda", index)
            groups[f"cuda:{index}"] = (name, cache_key(ghash, signature, name, version))
    # absent devices first: a missing record fails before minutes of measuring
    device_profiles: dict[str, Profile] = {}
    for lane in cuda_lanes:
        group = f"cuda:{parsed[lane][1]}"
        if group not in groups:
            recorded_lane = _from_recorded(recorded_profile, lane, ghash, shapes, names)
            device_profiles[group] = _rename(recorded_lane, lane, group)
    found = {
        group: cache.get(key, Expected(group, name, ghash, shapes, version, names))
        for group, (name, key) in groups.items()
    }
    to_measure = [group for group, profile in found.items() if profile is None]
    device_profiles.update({g: p for g, p in found.items() if p is not None})
    if to_measure:
        values = _node_values(gm, inputs) if to_measure != ["cpu"] else {}
        budget = _Budget(
            settings.profile_budget_s,
            len(nodes) * len(to_measure),
            settings.profile_warmup,
            settings.profile_repeats,
        )
        for group in to_measure:
            device = torch.device(group)
            if device.type == "cpu":
                costs, notes = _measure_on_cpu_lane(
                    gm,
                    inputs,
                    nodes,
                    threads,
                    settings.profile_warmup,
                    settings.profile_repeats,
                    settings.profile_budget_s / len(to_measure),
                    f"profiling on {group}",
                )
            else:
                costs, notes = _measure_on_cuda(
                    gm, values, nodes, device, budget, f"profiling on {group}"
                )
            transfer = measure_transfers(device) if device.type == "cuda" else {}
            if budget.fewest < settings.profile_repeats:
                notes.append(
                    f"{group}: the {settings.profile_budget_s:g} s profile budget cut repeats "
                    f"from {settings.profile_repeats} to {budget.fewest} for the slowest nodes"
                )
                log.warning(notes[-1])
            profile = Profile(
                devices=[group],
                device_names={group: groups[group][0]},
                node_ms={name: {group: ms} for name, ms in costs.items()},
                transfer=transfer,
                graph_hash=ghash,
                input_shapes=shapes,
                torch_version=version,
                notes=notes,
            )
            cache.put(groups[group][1], profile)
            device_profiles[group] = profile

    return _assemble(lanes, parsed, threads, device_profiles, names, ghash, shapes, version)


def _rename(profile: Profile, lane: str, group: str) -> Profile:
    if lane == group:
        return profile
    profile.devices = [group]
    profile.device_names = {group: profile.device_names[lane]}
    profile.node_ms = {n: {group: c[lane]} for n, c in profile.node_ms.items()}
    profile.transfer = {k.replace(lane, group): v for k, v in profile.transfer.items()}
    return profile


def _assemble(
    lanes: list[str],
    parsed: dict[str, tuple[str, int]],
    threads: int,
    device_profiles: dict[str, Profile],
    names: list[str],
    ghash: str,
    shapes: list[list[int]],
    version: str,
) -> Profile:
    """One Profile over the lanes from the per-device profiles."""
    node_ms: dict[str, dict[str, float]] = {name: {} for name in names}
    device_names: dict[str, str] = {}
    transfer: dict[str, list[float]] = {}
    notes = [f"cpu lanes: {threads} intra-op thread(s) each"] if "cpu" in device_profiles else []
    for lane in lanes:
        kind, index = parsed[lane]
        group = "cpu" if kind == "cpu" else f"cuda:{index}"
        source = device_profiles[group]
        device_names[lane] = source.device_names[group]
        for name in names:
            node_ms[name][lane] = source.node_ms.get(name, {}).get(group, math.inf)
    for group, source in device_profiles.items():
        notes += source.notes
        if group == "cpu":
            continue
        for lane in lanes:
            if parsed[lane][0] != "cpu":
                continue
            transfer[f"{lane}->{_lane_of(group, lanes, parsed)}"] = source.transfer[f"cpu->{group}"]
            transfer[f"{_lane_of(group, lanes, parsed)}->{lane}"] = source.transfer[f"{group}->cpu"]
    profile = Profile(lanes, device_names, node_ms, transfer, ghash, shapes, version, notes)
    profile.validate("assembled profile")
    return profile


def _lane_of(group: str, lanes: list[str], parsed: dict[str, tuple[str, int]]) -> str:
    index = int(group.split(":")[1])
    return next(lane for lane in lanes if parsed[lane] == ("cuda", index))
