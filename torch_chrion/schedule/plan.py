"""Plan: the lane and order of every node of a model, with its predictions. Plain data, JSON.

``make_plan(gm, profile, settings)`` schedules an aten graph; ``runtime/`` executes a Plan.
A Plan is validated when loaded (schema, types, lanes, one entry per node) and against the
graph it is used with (``validate(gm)``: no unknown or missing node, a topological order), and
every problem is a PlanError naming the file and the node or lane at fault.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import torch.fx as fx

from .. import jsonfile
from ..errors import InfeasiblePlanError, PlanError
from ..graph.nodes import runs_alike_on_any_thread, schedulable_nodes
from ..jsonfile import Nullable
from ..settings import GRANULARITIES, OBJECTIVES
from .from_graph import producer_of, task_graph_from
from .memory import resident_timeline
from .simulate import ExecutorCosts, rescore, simulate
from .solve import schedule_placement, solve, wide_everywhere
from .task_graph import Schedule, TaskGraph

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# The JSON document, field by field (jsonfile.check_fields).
_SCHEMA = {
    "placement": {str: str},
    "order": [str],
    "start_ms": {str: float},
    "finish_ms": {str: float},
    "predicted_ms": float,
    "device_bytes": {str: float},
    "objective": str,
    "slo_ms": Nullable(float),
    "slo_met": Nullable(bool),
    "devices": [str],
    "graph_hash": str,
    "granularity": Nullable(str),
    "seq_chunks": Nullable(int),
    "schema_version": int,
    "ops": {str: str},
    "transfers": [(str, str, str, str, float, float)],
    "memory": {str: [(float, float)]},
    "wide": Nullable({str: [str]}),
}
# written since these were recorded; older plans lack them
_OPTIONAL = ("granularity", "seq_chunks", "ops", "transfers", "memory", "wide")


@dataclasses.dataclass
class Plan(jsonfile.Document):
    """Where and in which order every schedulable node runs, and what that predicts.

    Attributes:
        placement: node name -> lane.
        order: every node name once, in a topological order: the order lanes run them.
        start_ms, finish_ms: predicted start and finish of each node (ms from the request).
        predicted_ms: predicted latency (makespan).
        device_bytes: lane -> predicted resident bytes (weights + peak activations).
        objective: "latency" or "memory".
        slo_ms: the latency SLO asked for, or None.
        slo_met: whether ``predicted_ms <= slo_ms`` (None without an SLO).
        devices: the lanes the plan may use.
        graph_hash: hash of the graph it was made for (given by the caller).
        granularity, seq_chunks: the recurrent splitting of that graph (None: not recorded).
        schema_version: JSON schema version.
        ops: node name -> its operator (for pictures and traces; None: not recorded).
        transfers: predicted cross-device copies, each (from node, to node, from lane, to lane,
            start ms, finish ms).
        memory: lane -> predicted resident bytes over time, as (ms, bytes from then on) steps.
        wide: node name -> the CPU lanes it holds, for the nodes placed wide (Note [Chrion wide
            placement] in task_graph.py): it runs with the intra-op threads of all of them
            while they run nothing else; its lane in ``placement`` is the first listed.
            None or absent: no node is wide.
    """

    WHAT = "plan"  # in messages (a class attribute, not a field)

    placement: dict[str, str]
    order: list[str]
    start_ms: dict[str, float]
    finish_ms: dict[str, float]
    predicted_ms: float
    device_bytes: dict[str, float]
    objective: str
    slo_ms: float | None
    slo_met: bool | None
    devices: list[str]
    graph_hash: str = ""
    granularity: str | None = None
    seq_chunks: int | None = None
    schema_version: int = SCHEMA_VERSION
    ops: dict[str, str] | None = None
    transfers: list[list[Any]] | None = None
    memory: dict[str, list[list[float]]] | None = None
    wide: dict[str, list[str]] | None = None

    def __post_init__(self) -> None:
        _check_structure(self, "<Plan>")

    # -- JSON ------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The plan as JSON text."""
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def _from_data(cls, data: dict[str, Any], source: str) -> Plan:
        jsonfile.check_document(data, _SCHEMA, SCHEMA_VERSION, source, cls.WHAT, _OPTIONAL)
        plan = cls.__new__(cls)
        for field in dataclasses.fields(cls):
            setattr(plan, field.name, data.get(field.name))
        _check_structure(plan, source)
        return plan

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan atomically (a temporary file in the same folder, then a rename, so a
        failed save leaves no half-written plan), with the umask's permissions.

        Raises:
            PlanError: the file cannot be written (a missing folder, no permission), naming it.
        """
        jsonfile.write_atomic(path, self.to_json(), "plan")

    # -- against a graph -------------------------------------------------------------------
    def validate(self, gm: fx.GraphModule) -> None:
        """Check the plan fits ``gm``: every schedulable node placed, no unknown node, and an
        order in which each node comes after the nodes it reads.

        Raises:
            PlanError: naming the node at fault.
        """
        nodes = schedulable_nodes(gm)
        names = {n.name for n in nodes}
        for name in self.order:
            if name not in names:
                raise PlanError(f"the plan places node {name!r}, which the graph does not have")
        for n in nodes:
            if n.name not in self.placement:
                raise PlanError(f"the plan does not place node {n.name!r} ({n.target})")
        position = {name: k for k, name in enumerate(self.order)}
        for v in nodes:
            for arg in v.all_input_nodes:
                u = producer_of(arg)
                if u is not None and u is not v and position[u.name] > position[v.name]:
                    raise PlanError(
                        f"the plan's order runs node {v.name!r} before its input {u.name!r}"
                    )

    def check_use(self, gm: fx.GraphModule, settings: Any) -> None:
        """Check a saved plan before it runs ``gm`` under ``settings`` (a ChrionSettings).

        Refused with a PlanError, as the plan cannot run as asked: lanes other than
        ``settings.devices`` (when given); another ``granularity`` or ``seq_chunks`` (the graph
        then has other nodes); any node of ``gm`` it does not place (naming both graph hashes).
        Run as saved, with a logged warning: another ``objective`` or ``slo_ms`` (the plan keeps
        its own); another graph hash over the same nodes (other input or weight shapes, so its
        predictions may not hold); an SLO it was predicted to miss.
        """
        from ..graph import graph_hash

        if settings.devices is not None and sorted(settings.devices) != sorted(self.devices):
            raise PlanError(
                f"the plan runs on lanes {self.devices}, but devices={list(settings.devices)} was "
                "asked: make the plan again for these lanes, or leave devices unset to use the "
                "plan's"
            )
        for name in ("granularity", "seq_chunks"):
            saved, asked = getattr(self, name), getattr(settings, name)
            if saved is not None and saved != asked:
                raise PlanError(
                    f"the plan was made with {name}={saved!r}, but {name}={asked!r} was asked: "
                    f"load it with {name}={saved!r} or make the plan again"
                )
        ghash = graph_hash(gm)
        try:
            self.validate(gm)
        except PlanError as exc:
            if self.graph_hash and self.graph_hash != ghash:
                raise PlanError(
                    f"the plan was made for another graph ({self.graph_hash}; this model's is "
                    f"{ghash}): {exc}"
                ) from exc
            raise
        if self.graph_hash and self.graph_hash != ghash:
            log.warning(
                "the plan was made for graph %s, not this one (%s): the same nodes with other "
                "shapes, so its predictions may not hold",
                self.graph_hash,
                ghash,
            )
        if (self.objective, self.slo_ms) != (settings.objective, settings.slo_ms):
            log.warning(
                "the plan was made for objective=%r, slo_ms=%r, but objective=%r, slo_ms=%r was "
                "asked: running the plan as saved",
                self.objective,
                self.slo_ms,
                settings.objective,
                settings.slo_ms,
            )
        if self.slo_met is False:
            log.warning(
                "the plan is predicted to miss its %g ms SLO (%.4f ms)",
                self.slo_ms,
                self.predicted_ms,
            )

    # -- views -----------------------------------------------------------------------------
    def lane_order(self, lane: str) -> list[str]:
        """The nodes ``lane`` runs or holds (a wide node led by another lane), in order."""
        return [n for n in self.order if lane in self.lanes_of(n)]

    def lanes_of(self, node: str) -> list[str]:
        """The lanes ``node`` holds: its own, and for a wide node the others it keeps idle."""
        held = (self.wide or {}).get(node)
        return list(held) if held else [self.placement[node]]

    def schedule(self, graph: TaskGraph, names: Sequence[str]) -> Schedule:
        """The plan as a Schedule of ``graph`` (whose tasks are ``names``), times zero, for the
        simulator to replay.

        Raises:
            PlanError: a lane ``graph`` does not have, or a wide node where ``graph`` has no
                wide option over the same lanes.
        """
        lanes = list(graph.devices)
        device = []
        for name in names:
            held = self.lanes_of(name)
            if any(lane not in lanes for lane in held):
                raise PlanError(f"node {name!r} runs on {held}; the graph has lanes {lanes}")
            index = tuple(lanes.index(lane) for lane in held)
            if len(index) > 1 and index != graph.wide_lanes:
                raise PlanError(
                    f"node {name!r} is wide on {held}, but the graph's wide option holds "
                    f"{[lanes[d] for d in graph.wide_lanes]}"
                )
            device.append(index[0] if len(index) == 1 else graph.wide_option)
        position = {name: k for k, name in enumerate(names)}
        order = [[position[n] for n in self.lane_order(lane)] for lane in lanes]
        zeros = [0.0] * len(names)
        return Schedule(device, zeros, zeros, order, 0.0)

    def table(self) -> str:
        """A text table: one line per node (lane, start, finish), then the predictions."""
        width = max([len(n) for n in self.order] + [4])
        lines = [f"{'node':<{width}}  {'lane':<8} {'start ms':>10} {'finish ms':>10}"]
        for n in self.order:
            lines.append(
                f"{n:<{width}}  {'+'.join(self.lanes_of(n)):<8} {self.start_ms[n]:>10.4f}"
                f" {self.finish_ms[n]:>10.4f}"
            )
        slo = "none" if self.slo_ms is None else f"{self.slo_ms:g} ms (met: {self.slo_met})"
        lines.append(f"objective {self.objective}; predicted {self.predicted_ms:.4f} ms; SLO {slo}")
        for lane in self.devices:
            count = len(self.lane_order(lane))
            nbytes = self.device_bytes.get(lane, 0.0)
            lines.append(f"  {lane}: {count} nodes, {nbytes / 2**20:.3f} MiB resident")
        return "\n".join(lines)

    def gantt(
        self,
        path: str | os.PathLike[str],
        title: str | None = None,
        measured: Sequence[Any] | None = None,
        measured_memory: Sequence[Any] | None = None,
    ) -> Any:
        """Save the timeline as a PNG: one row per lane, one labelled bar per node, transfers
        and the predicted memory per lane; with ``measured`` (the TraceEvents of a traced run,
        ``model.last_trace()``), the measured timeline under the predicted one, and with
        ``measured_memory`` (its MemorySamples, ``runtime.trace.load_memory``) the measured
        memory beside the predicted. Returns the matplotlib Figure."""
        from .gantt import draw_gantt

        return draw_gantt(
            self, path, title=title, measured=measured, measured_memory=measured_memory
        )


def _check_structure(plan: Plan, source: str) -> None:
    def bad(message: str) -> PlanError:
        return PlanError(f"{source}: {message}")

    if not isinstance(plan.devices, list) or not all(isinstance(d, str) for d in plan.devices):
        raise bad(f"devices must be a list of lane names, got {plan.devices!r}")
    if plan.objective not in OBJECTIVES:
        raise bad(f"objective must be one of {OBJECTIVES}, got {plan.objective!r}")
    if not isinstance(plan.placement, dict) or not isinstance(plan.order, list):
        raise bad("placement must map node names to lanes and order must list node names")
    lanes = set(plan.devices)
    for node, lane in plan.placement.items():
        if lane not in lanes:
            raise bad(f"node {node!r} is placed on unknown lane {lane!r} (lanes: {plan.devices})")
    seen: set[str] = set()
    for node in plan.order:
        if node in seen:
            raise bad(f"node {node!r} appears twice in the order")
        if node not in plan.placement:
            raise bad(f"node {node!r} is in the order but not placed")
        seen.add(node)
    for node in plan.placement:
        if node not in seen:
            raise bad(f"node {node!r} is placed but missing from the order")
    for what in ("start_ms", "finish_ms"):
        times = getattr(plan, what)
        if not isinstance(times, dict) or set(times) != seen:
            raise bad(f"{what} must give a time for each node of the order")
        for node, t in times.items():
            if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
                raise bad(f"{what} of node {node!r} is {t!r}")
    for node in plan.order:
        if plan.finish_ms[node] < plan.start_ms[node]:
            raise bad(f"node {node!r} finishes before it starts")
    if not isinstance(plan.predicted_ms, (int, float)) or not plan.predicted_ms >= 0:
        raise bad(f"predicted_ms must be a non-negative number, got {plan.predicted_ms!r}")
    if plan.slo_ms is not None and not (isinstance(plan.slo_ms, (int, float)) and plan.slo_ms > 0):
        raise bad(f"slo_ms must be a positive number or null, got {plan.slo_ms!r}")
    if not isinstance(plan.device_bytes, dict) or not set(plan.device_bytes) <= lanes:
        raise bad(f"device_bytes must map lanes of {plan.devices} to bytes")
    if not isinstance(plan.graph_hash, str):
        raise bad("graph_hash must be a string")
    if plan.granularity is not None and plan.granularity not in GRANULARITIES:
        raise bad(f"granularity must be one of {GRANULARITIES}, got {plan.granularity!r}")
    if plan.seq_chunks is not None and not (
        isinstance(plan.seq_chunks, int) and plan.seq_chunks >= 1
    ):
        raise bad(f"seq_chunks must be a positive integer, got {plan.seq_chunks!r}")
    if plan.wide is not None and not isinstance(plan.wide, dict):
        raise bad(f"wide must map node names to lists of lanes, got {plan.wide!r}")
    for node, held in (plan.wide or {}).items():
        if node not in plan.placement:
            raise bad(f"wide node {node!r} is not placed")
        if (
            not isinstance(held, list)
            or len(held) < 2
            or len(set(held)) != len(held)
            or held[0] != plan.placement[node]
        ):
            raise bad(
                f"wide node {node!r} must hold two or more distinct lanes, its own "
                f"({plan.placement[node]!r}) first; got {held!r}"
            )
        for lane in held:
            if lane not in lanes or lane.split(":")[0] != "cpu":
                raise bad(f"wide node {node!r} holds {lane!r}, which is not a CPU lane of the plan")


def make_plan(
    gm: fx.GraphModule,
    profile: Any,
    settings: Any,
    graph_hash: str | None = None,
    costs: ExecutorCosts | None = None,
) -> Plan:
    """Schedule the aten graph ``gm`` with the costs of ``profile`` under ``settings``: the
    first of ``make_plans``, the one its replay with ``costs`` prefers.

    Args:
        gm: the aten graph.
        profile: a Profile (duck-typed: ``devices``, ``node_ms``, ``transfer``).
        settings: a ChrionSettings (objective, slo_ms, devices, strict are used).
        graph_hash: recorded in the plan; default the profile's ``graph_hash`` if it has one.
        costs: the executor's own costs on the target machine
            (``torch_chrion.runtime.calibrate.executor_costs``): the prediction (times,
            ``predicted_ms``, ``slo_met``) replays the schedule with them. None: the ideal
            replay the search itself uses.

    Raises:
        InfeasiblePlanError: ``settings.strict`` and no plan meets ``settings.slo_ms``.
        PlanError: the profile does not cover the graph or the lanes.
    """
    return make_plans(gm, profile, settings, graph_hash, costs)[0]


def make_plans(
    gm: fx.GraphModule,
    profile: Any,
    settings: Any,
    graph_hash: str | None = None,
    costs: ExecutorCosts | None = None,
) -> list[Plan]:
    """The plans worth timing for ``gm`` (make_plan's arguments): the one the replay with
    ``costs`` prefers first, then, for the latency objective, the other of the search's plan and
    the whole graph placed wide where its replay is within TRIAL_RATIO of the first's (Note
    [Plan trials] in runtime/trial.py: the profile's wide costs are the least certain).
    """
    devices = list(settings.devices) if settings.devices else list(profile.devices)
    graph, names = task_graph_from(gm, profile, devices)
    if graph.n == 0:  # outputs are inputs or constants: nothing to place, nothing to wait for
        schedule = Schedule([], [], [], [[] for _ in devices], 0.0, algorithm="empty")
    else:
        try:
            schedule = solve(graph, settings.objective, settings.slo_ms, strict=settings.strict)
        except InfeasiblePlanError as exc:
            raise InfeasiblePlanError(
                f"no plan meets slo_ms={settings.slo_ms:g} on lanes {devices}: the best predicted"
                f" latency is {exc.best_ms:.4f} ms",
                best_ms=exc.best_ms,
            ) from exc
        alike = [runs_alike_on_any_thread(n) for n in schedulable_nodes(gm)]
        schedule = join_wide_neighbours(graph, schedule, alike, costs)
        if costs is not None and settings.objective == "latency":
            graph, _ = task_graph_from(gm, profile, devices, every_wide_cost=True)
            return [
                _plan_of(gm, profile, settings, graph_hash, costs, devices, graph, names, chosen)
                for chosen in wide_if_faster(graph, schedule, costs)
            ]
    return [_plan_of(gm, profile, settings, graph_hash, costs, devices, graph, names, schedule)]


def _plan_of(
    gm: fx.GraphModule,
    profile: Any,
    settings: Any,
    graph_hash: str | None,
    costs: ExecutorCosts | None,
    devices: list[str],
    graph: TaskGraph,
    names: list[str],
    schedule: Schedule,
) -> Plan:
    """The Plan of ``schedule`` on ``graph`` (from_graph.task_graph_from of ``gm``), replayed
    with ``costs``."""
    sim = simulate(graph, schedule, costs)
    if settings.slo_ms is not None and sim.makespan > settings.slo_ms:
        log.warning(
            "the plan misses the %g ms SLO: predicted %.4f ms on lanes %s (the best plan found;"
            " strict=True refuses instead)",
            settings.slo_ms,
            sim.makespan,
            devices,
        )
    # lists, not tuples: what the plan reads back from JSON compares equal to what it wrote
    runs_on = [devices[d] for d in graph.runners(schedule.device)]
    transfers = [
        [names[u], names[v], runs_on[u], runs_on[v], t0, t1]
        for u, v, t0, t1 in _transfers(graph, schedule.device, sim.finish)
    ]
    wide = {
        names[i]: [devices[d] for d in graph.option_lanes[o]]
        for i, o in enumerate(schedule.device)
        if o == graph.wide_option
    }
    timeline = resident_timeline(graph, schedule.device, sim.start, sim.finish)
    position = {t: k for k, t in enumerate(graph.topo_order)}
    # by start, zero-length nodes before a longer one starting with them (as lanes ran them)
    order = sorted(range(graph.n), key=lambda i: (sim.start[i], sim.finish[i], position[i]))
    return Plan(
        placement={names[i]: runs_on[i] for i in range(graph.n)},
        order=[names[i] for i in order],
        start_ms={names[i]: sim.start[i] for i in range(graph.n)},
        finish_ms={names[i]: sim.finish[i] for i in range(graph.n)},
        predicted_ms=sim.makespan,
        device_bytes={d: float(b) for d, b in zip(devices, sim.peak_bytes, strict=True)},
        objective=settings.objective,
        slo_ms=settings.slo_ms,
        slo_met=None if settings.slo_ms is None else sim.makespan <= settings.slo_ms,
        devices=devices,
        graph_hash=graph_hash
        if graph_hash is not None
        else str(getattr(profile, "graph_hash", "")),
        granularity=getattr(settings, "granularity", None),
        seq_chunks=getattr(settings, "seq_chunks", None),
        ops={n.name: str(n.target) for n in schedulable_nodes(gm)},
        transfers=transfers,
        memory={d: [list(p) for p in points] for d, points in zip(devices, timeline, strict=True)},
        wide=wide or None,
    )


# the whole graph placed wide replaces the search's plan only where its replay takes at most this
# share of the plan's: a wide cost is the quicker of two modes (the kernels' helpers engaged or
# not, Note [Warm runs] in profile/cpu.py), and plans of batch-1 bidirectional models placed
# whole wide on such costs ran 10-20% over their predictions
WHOLE_WIDE_MAX_RATIO = 0.85
# the other of the two is timed against the replay's choice where it replays within this factor
# of it (Note [Plan trials] in runtime/trial.py): replays 1.3x apart ran alike (the
# DeepSpeech2-like model's search plan and whole graph wide replayed 7.49 and 5.76 ms and ran
# 7.29 and 7.30), and the bi-LSTM 2x128's whole graph wide, replayed 0.87x its search plan, ran
# 1.18x it
TRIAL_RATIO = 1.5


def wide_if_faster(graph: TaskGraph, schedule: Schedule, costs: ExecutorCosts) -> list[Schedule]:
    """The whole graph placed wide (solve.wide_everywhere) first, where it replays faster than
    ``schedule`` with the executor's ``costs`` by WHOLE_WIDE_MAX_RATIO, else ``schedule`` first;
    then the other one where it differs and replays within TRIAL_RATIO of the first (worth a
    trial, Note [Plan trials] in runtime/trial.py). ``graph`` gives every node with a wide cost
    its wide option (from_graph's ``every_wide_cost``).

    The search sees the wide options of the nodes that threads speed up by enough to pay for
    holding the lanes, and costs no hand-off. Placed wide whole, the graph holds the lanes once
    and its caller runs every step (Note [Chrion inline requests] in
    csrc/executor/executor.cpp), so even a step of some tens of us saves what its second thread
    does (a seq2seq decoder's one-step GRUs), and the hand-offs between lanes are gone: the
    decoder's two-lane plan predicted 0.82 ms with the executor's costs and ran 1.03 ms, the
    whole graph wide 0.57 and 0.73 (interleaved in one process; onnxruntime 0.72). Only the
    replay with those costs sees both."""
    if graph.wide_option is None:
        return [schedule]
    whole = rescore(graph, schedule_placement(graph, wide_everywhere(graph)))
    searched_ms = simulate(graph, schedule, costs).makespan
    whole_ms = simulate(graph, whole, costs).makespan
    ranked = [(whole, whole_ms), (schedule, searched_ms)]
    if whole_ms > WHOLE_WIDE_MAX_RATIO * searched_ms:
        ranked.reverse()
    (first, first_ms), (other, other_ms) = ranked
    if list(other.device) == list(first.device) or other_ms > TRIAL_RATIO * first_ms:
        return [first]
    return [first, other]


# the most a task may cost to be joined to a wide neighbour: what joining saves is a hand-off or
# a parked lane's wake-up (a few to some 60 us), so a dearer task would only serialise work
JOIN_MAX_MS = 0.02


def join_wide_neighbours(
    graph: TaskGraph, schedule: Schedule, alike: Sequence[bool], costs: ExecutorCosts | None
) -> Schedule:
    """``schedule`` with the light tasks next to its wide tasks (through other light tasks)
    placed wide too, unless that lengthens the replay with the executor's ``costs`` by more than
    their own cost (all that running them beside other tasks could save, a few us: a join that
    costs more has serialised real work).

    A light task (``alike[i]``, graph.nodes.runs_alike_on_any_thread: a view, or an op too small
    for ATen to split; and at most JOIN_MAX_MS) costs the same on any thread and has a wide
    option wherever a wide task does (from_graph.py). On a lane, one that reads a wide task's
    output waits for that lane's thread to wake (it parked while the wide task ran: some 60 us
    each under load on the 2-core machine, against a 450 us LSTM layer), and one that feeds a
    wide task hands it over from another thread; on the wide task's own thread, it runs in
    place. The search does not see that saving (it schedules without the executor's costs, and a
    light task's wide option only ever ties), so it is made here: a batch-1 recurrent model
    whose layers are wide then runs every step on one thread, as on one lane with all the
    threads (the concatenations of the layers' final states included: on the lanes, the ONNX
    path's 2-layer LSTM woke both).
    """
    wide = graph.wide_option
    if wide is None or wide not in schedule.device:
        return schedule
    placement = list(schedule.device)
    frontier = [i for i, option in enumerate(placement) if option == wide]
    joined_ms = 0.0
    while frontier:
        i = frontier.pop()
        for j in (*graph.preds[i], *graph.succs[i]):
            # from a wide lane only: no accelerator's memory or transfers change
            if (
                alike[j]
                and placement[j] in graph.wide_lanes
                and wide in graph.runnable_on[j]
                and graph.cost[j][placement[j]] <= JOIN_MAX_MS
            ):
                joined_ms += float(graph.cost[j][placement[j]])
                placement[j] = wide
                frontier.append(j)
    if joined_ms == 0.0:
        return schedule
    candidate = schedule_placement(graph, placement)
    before = simulate(graph, schedule, costs).makespan
    if simulate(graph, candidate, costs).makespan > before + joined_ms:
        return schedule
    return rescore(
        graph, dataclasses.replace(schedule, device=candidate.device, order=candidate.order)
    )


def _transfers(
    graph: TaskGraph, device: Sequence[int], finish: Sequence[float]
) -> list[tuple[int, int, float, float]]:
    """(producer, consumer, start, finish) of every copy between memories (as simulated)."""
    group = graph.option_group
    copies = []
    for u in range(graph.n):
        for v, cost in zip(graph.succs[u], graph.succ_cost[u], strict=True):
            if group[device[u]] != group[device[v]] and cost > 0:
                copies.append((u, v, finish[u], finish[u] + cost))
    return copies
