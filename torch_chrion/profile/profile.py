"""Profile: what every node costs on every lane, and what moving bytes between devices costs.

Plain data, saved as JSON, so a profile recorded on a machine with a GPU can plan, and simulate,
a CPU+GPU deployment on a machine without one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import PlanError

SCHEMA_VERSION = 1


def lane_kind(lane: str) -> str:
    """The physical device family of a lane: "cpu" for "cpu" / "cpu:1", "cuda" for "cuda:0"."""
    return lane.split(":")[0]


def same_memory(a: str, b: str) -> bool:
    """Whether two lanes share memory (no copy between them): the same lane, or two CPU lanes."""
    return a == b or (lane_kind(a) == "cpu" and lane_kind(b) == "cpu")


@dataclasses.dataclass
class Profile:
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
    """

    devices: list[str]
    device_names: dict[str, str]
    node_ms: dict[str, dict[str, float]]
    transfer: dict[str, list[float]]
    graph_hash: str
    input_shapes: list[list[int]]
    torch_version: str
    notes: list[str] = dataclasses.field(default_factory=list)

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
    def from_json(cls, text: str, source: str = "<string>") -> Profile:
        """Parse a profile written by ``to_json``; a bad document raises PlanError naming it."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"{source} is not a JSON profile: {exc}") from exc
        if not isinstance(data, dict):
            raise PlanError(f"{source}: a profile is a JSON object, got {type(data).__name__}")
        version = data.pop("schema_version", None)
        if version != SCHEMA_VERSION:
            raise PlanError(
                f"{source}: profile schema_version {version!r}, this torch_chrion reads "
                f"{SCHEMA_VERSION}; record the profile again"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(f for f in fields - set(data) if f != "notes")
        unknown = sorted(set(data) - fields)
        if missing or unknown:
            raise PlanError(f"{source}: profile fields missing {missing}, unknown {unknown}")
        try:
            profile = cls(**data)
            profile.node_ms = {
                str(node): {
                    str(lane): (math.inf if ms is None else float(ms)) for lane, ms in lanes.items()
                }
                for node, lanes in profile.node_ms.items()
            }
            profile.transfer = {
                str(k): [float(v[0]), float(v[1])] for k, v in profile.transfer.items()
            }
        except (TypeError, ValueError, AttributeError, IndexError) as exc:
            raise PlanError(f"{source}: malformed profile: {exc}") from exc
        profile.validate(source)
        return profile

    def validate(self, source: str = "profile") -> None:
        """Check lanes, costs and transfers are consistent; raise PlanError naming the fault."""
        lanes = set(self.devices)
        for node, costs in self.node_ms.items():
            for lane, ms in costs.items():
                if lane not in lanes:
                    raise PlanError(f"{source}: node {node!r} has a cost on unknown lane {lane!r}")
                if not ms >= 0:
                    raise PlanError(f"{source}: node {node!r} costs {ms} ms on {lane}")
        # a device's own profile (as cached) names the host side of its copies "cpu"
        endpoints = lanes | {"cpu"}
        for key, (latency, bandwidth) in self.transfer.items():
            src, _, dst = key.partition("->")
            if src not in endpoints or dst not in endpoints:
                raise PlanError(f"{source}: transfer {key!r} names a lane not in {self.devices}")
            if not (latency >= 0 and bandwidth > 0):
                raise PlanError(f"{source}: transfer {key!r} = {[latency, bandwidth]} is invalid")

    def save(self, path: str | os.PathLike) -> None:
        """Write the profile to ``path`` atomically (a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.to_json())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> Profile:
        """Read a profile saved by ``save``; a missing or bad file raises PlanError."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise PlanError(f"cannot read profile {path}: {exc}") from exc
        return cls.from_json(text, source=str(path))

    def summary(self) -> dict[str, Any]:
        """Total milliseconds per lane (a quick look, not a schedule)."""
        return {
            lane: sum(costs.get(lane, math.inf) for costs in self.node_ms.values())
            for lane in self.devices
        }
