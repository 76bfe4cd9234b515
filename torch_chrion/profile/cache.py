"""On-disk cache of per-device profiles.

One JSON file per (graph hash, input shapes and dtypes, device name, torch version, the
kernels' and executor's sources): the measurements of one physical device (all CPU lanes of one
thread count share one), so a graph profiled once on CPU reuses that CPU profile when a GPU lane
is added, and a second load of the same model and shapes measures nothing.

An entry is used only when it is fully valid for what it is looked up for (schema and types,
every node of the graph, a finite cost on a CPU, the device's name, graph hash, shapes and torch
version); anything else -- a damaged file, a FIFO at its path, another graph's profile -- is
treated as missing: measured again and overwritten. A cache can slow a start, never break it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
from pathlib import Path

from .._extension import load
from ..errors import PlanError
from .profile import Profile

log = logging.getLogger(__name__)


# Bumped whenever how nodes are measured changes, so profiles measured the old way are not reused.
METHOD_VERSION = 6  # 6: every node timed wide, not only the dearer ones (profile/cpu.py)


def cache_key(graph_hash: str, input_signature: list, device_name: str, torch_version: str) -> str:
    """File name of a device profile in the cache."""
    text = json.dumps(
        [graph_hash, input_signature, device_name, torch_version, METHOD_VERSION, built_from()]
    )
    return f"{graph_hash}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"


@functools.cache
def built_from() -> list[str]:
    """The source hashes of the kernels and the executor that run the nodes: a profile measured
    with other code (an upgraded torch_chrion, an edited kernel) costs other code, so it is
    another cache entry, not reused."""
    return [load(name).build_info()["source_hash"] for name in ("kernels", "executor")]


@dataclasses.dataclass(frozen=True)
class Expected:
    """What a cached profile of one physical device must hold to be used."""

    group: str  # "cpu" or "cuda:i"
    device_name: str
    graph_hash: str
    input_shapes: list[list[int]]
    torch_version: str
    nodes: list[str]
    # every node costs a finite time on a CPU; a wide measurement (assemble.WIDE_GROUP) costs
    # inf for the nodes not worth measuring wide
    finite: bool = True


def check_entry(profile: Profile, expected: Expected, source: str) -> None:
    """Raise PlanError unless ``profile`` is a complete measurement of ``expected``."""
    group = expected.group
    facts = (profile.devices, profile.device_names, profile.graph_hash, profile.input_shapes)
    wanted = ([group], {group: expected.device_name}, expected.graph_hash, expected.input_shapes)
    if facts != wanted or profile.torch_version != expected.torch_version:
        raise PlanError(f"{source} is not the profile of this graph, shapes and {group}")
    if sorted(profile.node_ms) != sorted(expected.nodes):
        raise PlanError(f"{source} does not cost exactly the graph's {len(expected.nodes)} nodes")
    for node, costs in profile.node_ms.items():
        # a CUDA node that failed there is measured as inf; every node runs on the CPU
        finite = group == "cpu" and expected.finite
        if group not in costs or (finite and not math.isfinite(costs[group])):
            raise PlanError(f"{source}: node {node!r} has no cost on {group}")
    if group != "cpu" and {f"cpu->{group}", f"{group}->cpu"} - set(profile.transfer):
        raise PlanError(f"{source} lacks the host<->{group} transfer costs")


class ProfileCache:
    """Device profiles in ``directory``, read and written by key."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def get(self, key: str, expected: Expected) -> Profile | None:
        """The cached profile under ``key`` if it is valid for ``expected``, else None."""
        path = self.directory / key
        if not path.exists() and not path.is_symlink():
            log.info("profile cache miss for %s: measuring (%s)", expected.group, path)
            return None
        try:
            profile = Profile.load(path)
            check_entry(profile, expected, str(path))
        except PlanError as exc:
            log.warning("ignoring the cached profile %s, measuring again: %s", path, exc)
            return None
        log.info("profile cache hit for %s: %s", expected.group, path)
        return profile

    def put(self, key: str, profile: Profile) -> None:
        try:
            profile.save(self.directory / key)
        except PlanError as exc:  # a read-only cache slows the next start, nothing more
            log.warning("could not cache the profile in %s: %s", self.directory, exc)
