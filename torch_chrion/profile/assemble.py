"""One Profile over the lanes, assembled from the profiles of the physical devices they run on
(all CPU lanes share the "cpu" device's measurement, each CUDA lane its own "cuda:i")."""

from __future__ import annotations

import math

from .profile import Profile


def assemble(
    lanes: list[str],
    parsed: dict[str, tuple[str, int]],
    threads: int,
    device_profiles: dict[str, Profile],
    names: list[str],
    ghash: str,
    shapes: list[list[int]],
    version: str,
) -> Profile:
    """One Profile over ``lanes`` from the per-device profiles."""
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
