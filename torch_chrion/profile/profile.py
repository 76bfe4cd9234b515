"""Profile: what every node costs on every lane, and what moving bytes between devices costs.

Plain data, saved as JSON, so a profile recorded on a machine with a GPU can plan, and simulate,
a CPU+GPU deployment on a machine without one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from .. import jsonfile
from ..errors import PlanError
from ..jsonfile import Nullable

SCHEMA_VERSION = 1

# No operator measured within a profile budget takes an hour: a larger cost is a damaged file
# (1e308 ms would overflow every sum the scheduler makes).
MAX_COST_MS = 3.6e6

# The JSON document, field by field (jsonfile.check_fields); null costs are lanes that cannot
# run the node.
_SCHEMA = {
    "schema_version": int,
    "devices": [str],
    "device_names": {str: str},
    "node_ms": {str: {str: Nullable(float)}},
    "transfer": {str: (float, float)},
    "graph_hash": str,
    "input_shapes": [[int]],
    "torch_version": str,
    "notes": [str],
    "wide_ms": {str: float},
    "wide_lanes": [str],
    "paired_ms": {str: float},
}
# written since these were recorded; older profiles lack them (and then have no wide costs)
_OPTIONAL = ("notes", "wide_ms", "wide_lanes", "paired_ms")


def lane_kind(lane: str) -> str:
    """The physical device family of a lane: "cpu" for "cpu" / "cpu:1", "cuda" for "cuda:0"."""
    return lane.split(":")[0]


def same_memory(a: str, b: str) -> bool:
    """Whether two lanes share memory (no copy between them): the same lane, or two CPU lanes."""
    return a == b or (lane_kind(a) == "cpu" and lane_kind(b) == "cpu")


@dataclasses.dataclass
class Profile(jsonfile.Document):
    """Measured costs of one aten graph for one input-shape bucket.

    Attributes:
        devices: the lanes profiled, e.g. ["cpu:0", "cpu:1", "cuda:0"].
        device_names: lane -> hardware name (CPU model with thread count, GPU name).
        node_ms: schedulable node name -> lane -> median milliseconds; a lane that is missing
            or ``inf`` cannot run the node.
        transfer: "src->dst" -> [latency_ms, bytes_per_ms] for each pair of lanes on different
            physical devices; lanes sharing memory cost nothing (``transfer_ms`` returns 0).
        graph_hash: ``torch_chrion.graph.graph_hash`` of the graph profiled.
        input_shapes: the shape of each graph input.
        torch_version: ``torch.__version__`` of the run that measured it.
        notes: how it was measured (thread counts, repeats, budget cuts, recorded lanes).
        wide_ms: node name -> median milliseconds placed wide over ``wide_lanes`` (one lane's
            thread running it with the intra-op threads of all of them; Note [Chrion wide
            placement] in schedule/task_graph.py), for the nodes worth it (profiler.py says
            which). Empty: no wide costs (a single CPU lane, or a profile older than them).
        wide_lanes: the CPU lanes ``wide_ms`` holds (every CPU lane profiled), or empty.
        paired_ms: node name -> median milliseconds on one of ``wide_lanes`` while the same graph
            runs on another of them at once (profiler.py says which nodes), for the simulator's
            slowdown of side-by-side tasks (schedule/simulate.py). Empty: none (a single CPU
            lane, or a profile older than them).
    """

    WHAT = "profile"  # in messages (a class attribute, not a field)

    devices: list[str]
    device_names: dict[str, str]
    node_ms: dict[str, dict[str, float]]
    transfer: dict[str, list[float]]
    graph_hash: str
    input_shapes: list[list[int]]
    torch_version: str
    notes: list[str] = dataclasses.field(default_factory=list)
    wide_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    wide_lanes: list[str] = dataclasses.field(default_factory=list)
    paired_ms: dict[str, float] = dataclasses.field(default_factory=dict)

    def cost_ms(self, node: str, lane: str) -> float:
        """Milliseconds ``node`` takes on ``lane``; ``inf`` when the lane cannot run it."""
        try:
            return self.node_ms[node].get(lane, math.inf)
        except KeyError:
            raise PlanError(f"the profile has no node {node!r}") from None

    def transfer_ms(self, src: str, dst: str, nbytes: int) -> float:
        """Milliseconds to move ``nbytes`` from lane ``src`` to lane ``dst``."""
        if same_memory(src, dst) or nbytes == 0:
            return 0.0
        try:
            latency, bytes_per_ms = self.transfer[f"{src}->{dst}"]
        except KeyError:
            raise PlanError(f"the profile has no transfer cost for {src}->{dst}") from None
        return latency + nbytes / bytes_per_ms

    # JSON
    def to_json(self) -> str:
        """The profile as a JSON document (``inf`` written as null)."""
        data = dataclasses.asdict(self)
        data["node_ms"] = {
            node: {lane: (ms if math.isfinite(ms) else None) for lane, ms in lanes.items()}
            for node, lanes in self.node_ms.items()
        }
        return json.dumps({"schema_version": SCHEMA_VERSION, **data}, indent=1, sort_keys=True)

    @classmethod
    def _from_data(cls, data: dict[str, Any], source: str) -> Profile:
        jsonfile.check_document(data, _SCHEMA, SCHEMA_VERSION, source, cls.WHAT, _OPTIONAL)
        del data["schema_version"]
        profile = cls(**data)
        profile.node_ms = {
            node: {lane: (math.inf if ms is None else float(ms)) for lane, ms in lanes.items()}
            for node, lanes in profile.node_ms.items()
        }
        profile.transfer = {k: [float(v[0]), float(v[1])] for k, v in profile.transfer.items()}
        profile.wide_ms = {node: float(ms) for node, ms in profile.wide_ms.items()}
        profile.paired_ms = {node: float(ms) for node, ms in profile.paired_ms.items()}
        profile.validate(source)
        return profile

    def validate(self, source: str = "profile") -> None:
        """Check lanes, costs and transfers are consistent; raise PlanError naming the fault."""
        lanes = set(self.devices)
        if not lanes or set(self.device_names) != lanes:
            raise PlanError(
                f"{source}: device_names must name each lane of {self.devices} once, "
                f"got {sorted(self.device_names)}"
            )
        for node, costs in self.node_ms.items():
            for lane, ms in costs.items():
                if lane not in lanes:
                    raise PlanError(f"{source}: node {node!r} has a cost on unknown lane {lane!r}")
                if not (0 <= ms <= MAX_COST_MS or ms == math.inf):
                    raise PlanError(f"{source}: node {node!r} costs {ms} ms on {lane}")
        # a device's own profile (as cached) names the host side of its copies "cpu"
        endpoints = lanes | {"cpu"}
        for key, (latency, bandwidth) in self.transfer.items():
            src, _, dst = key.partition("->")
            if src not in endpoints or dst not in endpoints:
                raise PlanError(f"{source}: transfer {key!r} names a lane not in {self.devices}")
            if not (0 <= latency <= MAX_COST_MS and 0 < bandwidth < math.inf):
                raise PlanError(f"{source}: transfer {key!r} = {[latency, bandwidth]} is invalid")
        wide_lanes = set(self.wide_lanes)
        if self.wide_lanes and (
            len(wide_lanes) != len(self.wide_lanes)
            or len(wide_lanes) < 2
            or not wide_lanes <= lanes
            or any(lane_kind(lane) != "cpu" for lane in wide_lanes)
        ):
            raise PlanError(
                f"{source}: wide_lanes must be two or more distinct CPU lanes of {self.devices}, "
                f"got {self.wide_lanes}"
            )
        if self.wide_ms and not self.wide_lanes:
            raise PlanError(f"{source}: wide_ms without wide_lanes")
        for what, costs in (("wide", self.wide_ms), ("paired", self.paired_ms)):
            for node, ms in costs.items():
                if node not in self.node_ms:
                    raise PlanError(
                        f"{source}: {what} cost of node {node!r}, which has no lane costs"
                    )
                if not 0 <= ms <= MAX_COST_MS:
                    raise PlanError(f"{source}: node {node!r} costs {ms} ms {what}")

    def save(self, path: str | os.PathLike) -> None:
        """Write the profile to ``path`` atomically (a reader never sees half a file), creating
        its folder, with the umask's permissions; PlanError naming ``path`` when it cannot."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PlanError(f"cannot write the profile {path}: {exc.strerror or exc}") from exc
        jsonfile.write_atomic(path, self.to_json(), "profile")

    def summary(self) -> dict[str, Any]:
        """Total milliseconds per lane (a quick look, not a schedule)."""
        return {
            lane: sum(costs.get(lane, math.inf) for costs in self.node_ms.values())
            for lane in self.devices
        }
