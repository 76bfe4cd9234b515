"""Profiles recorded on another machine, standing in for the lanes whose device is not here."""

from __future__ import annotations

import os

from ..errors import ChrionError, PlanError
from .profile import Profile


def load_recorded(recorded: Profile | str | os.PathLike | None) -> Profile | None:
    """The recorded profile given as a Profile or the path of one (None: none given)."""
    if recorded is None or isinstance(recorded, Profile):
        return recorded
    return Profile.load(recorded)


def from_recorded(
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


def rename_lane(profile: Profile, lane: str, group: str) -> Profile:
    """``profile`` of one lane, renamed to the physical device ``group`` it stands for."""
    if lane == group:
        return profile
    profile.devices = [group]
    profile.device_names = {group: profile.device_names[lane]}
    profile.node_ms = {n: {group: c[lane]} for n, c in profile.node_ms.items()}
    profile.transfer = {k.replace(lane, group): v for k, v in profile.transfer.items()}
    return profile
