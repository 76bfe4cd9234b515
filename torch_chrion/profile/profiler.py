"""profile_graph: the cost of every schedulable node of an aten graph on every lane.

How: each physical device is measured once. All CPU lanes of one intra-op thread count share one
CPU measurement, taken by the executor on a traced lane (cpu.py); with two or more CPU lanes
every node is also measured placed wide over all of them (Note [Chrion wide placement] in
schedule/task_graph.py), in runs interleaved with the one-lane runs; each CUDA lane gets its own,
each node called alone on its recorded inputs and timed by CUDA events (cuda.py), plus the pinned
host<->device copy costs (transfer.py), within the time budget (budget.py). Each device's
measurement is cached on disk (cache.py); a cached CPU measurement is used after a quick re-time
finds none of its nodes far above what they cost now (cpu.py: one measured under load is measured
again). A lane whose device is not on this machine comes from a profile recorded where it is
(recorded.py); with none, profiling refuses rather than invent a number. The per-device profiles
are then assembled into one over the lanes (assemble.py).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import fx

from .._extension import cache_root
from ..errors import OptionError
from ..graph import graph_hash
from ..graph.nodes import schedulable_nodes
from ..runtime.lanes import DEFAULT_CPU_THREADS
from ..settings import ChrionSettings
from .assemble import WIDE_GROUP, assemble, device_of
from .budget import Budget
from .cache import Expected, ProfileCache, cache_key
from .cpu import Lull, cached_profile_holds, measure_on_cpu_lane
from .cuda import measure_on_cuda, node_values
from .devices import cuda_present, lane_device_name, parse_lane
from .profile import Profile
from .recorded import from_recorded, load_recorded, rename_lane
from .transfer import measure_transfers

log = logging.getLogger(__name__)


def profile_graph(
    gm: fx.GraphModule,
    example_inputs: Sequence[torch.Tensor],
    devices: Sequence[str],
    *,
    settings: ChrionSettings | None = None,
    cache_dir: str | os.PathLike | None = None,
    recorded: Profile | str | os.PathLike | None = None,
    lull: Lull | None = None,
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
        lull: for a profile taken in the background: CPU graph runs wait for it and runs that
            requests overlapped are not counted (profile/cpu.py).

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
    recorded_profile = load_recorded(recorded)

    cpu_lanes = [lane for lane in lanes if parsed[lane][0] == "cpu"]
    cuda_lanes = [lane for lane in lanes if parsed[lane][0] == "cuda"]
    threads = settings.cpu_threads or DEFAULT_CPU_THREADS
    wide_lanes = cpu_lanes if len(cpu_lanes) > 1 else []

    # what each physical device ("cpu" or "cuda:i") needs: a cached, measured or recorded
    # profile; and WIDE_GROUP, the nodes measured placed wide over every CPU lane (cached by
    # the lanes' thread count and their number)
    groups: dict[str, tuple[str, str]] = {}  # group -> (device name, cache key)
    if cpu_lanes:
        name = lane_device_name("cpu", 0, threads)
        groups["cpu"] = (name, cache_key(ghash, signature, name, version))
    if wide_lanes:
        name = f"{lane_device_name('cpu', 0, threads)}, wide over {len(wide_lanes)} lanes"
        groups[WIDE_GROUP] = (name, cache_key(ghash, signature, name, version))
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
            recorded_lane = from_recorded(recorded_profile, lane, ghash, shapes, names)
            device_profiles[group] = rename_lane(recorded_lane, lane, group)
    found = {
        group: cache.get(
            key,
            Expected(device_of(group), name, ghash, shapes, version, names, group != WIDE_GROUP),
        )
        for group, (name, key) in groups.items()
    }
    # the one-lane and wide costs are measured together (measure_on_cpu_lane), so both are
    # measured again when either is missing or stale
    cpu_groups = [group for group in ("cpu", WIDE_GROUP) if group in groups]
    cached_cpu, cached_wide = found.get("cpu"), found.get(WIDE_GROUP)
    if cached_cpu is not None and (
        (wide_lanes and (cached_wide is None or not cached_cpu.paired_ms))
        or not cached_profile_holds(
            _cpu_ms(cached_cpu),
            gm,
            inputs,
            nodes,
            threads,
            lull,
            _cpu_ms(cached_wide) if cached_wide is not None else None,
            wide_lanes,
        )
    ):
        cached_cpu = None  # measured under load: measured again, and the cache overwritten
    if cached_cpu is None:
        found.update(dict.fromkeys(cpu_groups))
    to_measure = [group for group, profile in found.items() if profile is None]
    device_profiles.update({g: p for g, p in found.items() if p is not None})
    if to_measure:
        on_cuda = any(device_of(group) != "cpu" for group in to_measure)
        values = node_values(gm, inputs) if on_cuda else {}
        budget = Budget(
            settings.profile_budget_s,
            len(nodes) * len(to_measure),
            settings.profile_warmup,
            settings.profile_repeats,
        )
        measured: dict[str, tuple[dict[str, float], list[str], dict[str, list[float]]]] = {}
        paired_ms: dict[str, float] = {}  # cached with the one-lane costs ("cpu")
        if cached_cpu is None and cpu_groups:
            cpu = measure_on_cpu_lane(
                gm,
                inputs,
                nodes,
                threads,
                settings.profile_warmup,
                settings.profile_repeats,
                settings.profile_budget_s * len(cpu_groups) / len(to_measure),
                "profiling on cpu",
                lull,
                wide_lanes,
            )
            measured["cpu"] = (cpu.node_ms, cpu.notes, {})
            paired_ms = cpu.paired_ms
            if wide_lanes:
                # inf: not measured wide (assemble keeps no wide cost for it)
                wide_ms = {name: cpu.wide_ms.get(name, math.inf) for name in names}
                measured[WIDE_GROUP] = (wide_ms, [], {})
        for group in to_measure:
            device = torch.device(device_of(group))
            if device.type == "cuda":
                costs, notes = measure_on_cuda(
                    gm, values, nodes, device, budget, f"profiling on {group}"
                )
                if budget.fewest < settings.profile_repeats:
                    notes.append(
                        f"{group}: the {settings.profile_budget_s:g} s profile budget cut "
                        f"repeats from {settings.profile_repeats} to {budget.fewest} for the "
                        "slowest nodes"
                    )
                    log.warning(notes[-1])
                measured[group] = (costs, notes, measure_transfers(device))
        for group in to_measure:
            costs, notes, transfer = measured[group]
            profile = Profile(
                devices=[device_of(group)],
                device_names={device_of(group): groups[group][0]},
                node_ms={name: {device_of(group): ms} for name, ms in costs.items()},
                transfer=transfer,
                graph_hash=ghash,
                input_shapes=shapes,
                torch_version=version,
                notes=notes,
                paired_ms=paired_ms if group == "cpu" else {},
            )
            cache.put(groups[group][1], profile)
            device_profiles[group] = profile

    return assemble(lanes, parsed, threads, device_profiles, names, ghash, shapes, version)


def _cpu_ms(profile: Profile) -> dict[str, float]:
    """Ms by node of a cached CPU measurement (its one device is "cpu")."""
    return {name: costs["cpu"] for name, costs in profile.node_ms.items()}
