"""One Profile over the lanes, assembled from the profiles of the physical devices they run on
(all CPU lanes share the "cpu" device's measurement, each CUDA lane its own "cuda:i"), and the
wide costs from the nodes measured placed wide over every CPU lane (WIDE_GROUP), in runs
interleaved with the one-lane ones (cpu.measure_on_cpu_lane), with the paired costs measured in
the same runs (kept in the "cpu" measurement).
"""

from __future__ import annotations

import math

from .profile import Profile

# the key of the wide CPU measurement among the per-device profiles (its profile is of "cpu";
# inf for the nodes not measured wide)
WIDE_GROUP = "cpu@wide"


def device_of(group: str) -> str:
    """The device a per-device measurement is of: "cpu" for the wide one."""
    return "cpu" if group == WIDE_GROUP else group


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
        if device_of(group) == "cpu":
            continue
        for lane in lanes:
            if parsed[lane][0] != "cpu":
                continue
            transfer[f"{lane}->{_lane_of(group, lanes, parsed)}"] = source.transfer[f"cpu->{group}"]
            transfer[f"{_lane_of(group, lanes, parsed)}->{lane}"] = source.transfer[f"{group}->cpu"]
    profile = Profile(lanes, device_names, node_ms, transfer, ghash, shapes, version, notes)
    if WIDE_GROUP in device_profiles:
        cpu_lanes = [lane for lane in lanes if parsed[lane][0] == "cpu"]
        wide = device_profiles[WIDE_GROUP].node_ms
        profile.wide_lanes = cpu_lanes
        profile.wide_ms = {
            name: wide[name]["cpu"] for name in names if math.isfinite(wide[name]["cpu"])
        }
        profile.paired_ms = dict(device_profiles["cpu"].paired_ms)
        profile.notes.append(
            f"wide ({'+'.join(cpu_lanes)}): {threads * len(cpu_lanes)} intra-op threads, measured "
            f"placed wide between one-lane runs, for {len(profile.wide_ms)} node(s)"
        )
    profile.validate("assembled profile")
    return profile


def _lane_of(group: str, lanes: list[str], parsed: dict[str, tuple[str, int]]) -> str:
    index = int(group.split(":")[1])
    return next(lane for lane in lanes if parsed[lane] == ("cuda", index))
