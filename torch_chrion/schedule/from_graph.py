"""TaskGraph from an aten graph (``torch_chrion.graph.capture``) and a Profile.

Tasks are the schedulable nodes (``torch_chrion.graph.nodes.is_schedulable``): operator calls
other than ``operator.getitem``.
A getitem lives on its producer's lane and costs nothing, so it is folded: a node reading
``getitem(p, k)`` gets an edge from p, carrying the bytes of that element. Placeholders and
get_attr nodes are inputs and weights, not tasks.

The Profile is used by duck typing (``.devices``, ``.node_ms``, ``.transfer``), so this module
does not import torch_chrion.profile: an edge's transfer time is ``latency + bytes / bandwidth``
of the lane pair, taken as the largest over the ordered pairs of scheduled lanes that do not
share memory (a pessimistic cost keeps predicted latencies on the safe side of an SLO).

Paired costs (``.paired_ms``: a node on one of ``.wide_lanes`` while a copy of the graph runs
on another at once) give each node its ``paired_slowdown`` over its one-lane cost (at least 1),
when those lanes are scheduled; the simulator slows a task by it while another host task runs
beside it.

Wide costs (``.wide_ms`` over ``.wide_lanes``, Note [Chrion wide placement] in task_graph.py)
give a node a wide option when every lane they hold is scheduled, the node costs WIDE_MIN_MS or
more on one of those lanes and its wide cost is at most WIDE_MAX_RATIO of that: the options the
search gains from. With ``every_wide_cost``, every node with a wide cost has the option (the
graph on which plan.make_plan costs placing the whole graph wide). Where any node has one, so
does every view or node too small for ATen to split (``graph.nodes.runs_alike_on_any_thread``),
at its one-lane cost: it costs the same on any thread, and those around a wide node may then run
on its thread rather than hand its output to a lane that parked while it ran
(plan.join_wide_neighbours).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..errors import PlanError
from ..graph.nodes import is_schedulable, runs_alike_on_any_thread, schedulable_nodes
from .task_graph import SharesMemory, TaskGraph, cpu_lanes_share_memory

# A node gets a wide option for the search only where its wide cost is at most this fraction of
# its one-lane cost: run-to-run noise of a profile is a few percent, and the hold itself (the
# lanes meet before the step, the held ones are woken after) costs what the ideal model does not
# count.
WIDE_MAX_RATIO = 0.8
# ... and only where it costs at least this on one lane: below it, what threads could save is
# within the noise of a shared machine's profile, and handing the step to the wide lane and
# holding the others (tens of microseconds under load) eats it. A whole graph placed wide pays
# no hand-off (its caller runs every step), so plan.make_plan weighs that apart, with the
# executor's costs.
WIDE_MIN_MS = 0.25


def producer_of(node: fx.Node) -> fx.Node | None:
    """The schedulable node that computes ``node`` (through getitems), or None for inputs."""
    while node.op == "call_function" and node.target is operator.getitem:
        node = node.args[0]  # type: ignore[assignment]
    return node if is_schedulable(node) else None


def node_out_bytes(node: fx.Node) -> int:
    """``chrion_out_bytes`` meta, else the bytes of the tensors in ``meta["val"]``."""
    if "chrion_out_bytes" in node.meta:
        return int(node.meta["chrion_out_bytes"])
    total = 0
    stack = [node.meta.get("val")]
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, (tuple, list)):
            stack.extend(v)
    return total


def task_graph_from(
    gm: fx.GraphModule,
    profile: Any,
    devices: Sequence[str] | None = None,
    shares_memory: SharesMemory | None = None,
    every_wide_cost: bool = False,
) -> tuple[TaskGraph, list[str]]:
    """Build the TaskGraph of ``gm`` with the costs of ``profile``.

    Args:
        gm: the aten graph, ``chrion_out_bytes`` / ``chrion_weight_bytes`` in node meta.
        profile: a Profile (or anything with ``devices``, ``node_ms``, ``transfer``).
        devices: lanes to schedule on; default the profile's lanes.
        shares_memory: which lane pairs share memory; default CPU lanes share.
        every_wide_cost: give every node the profile has a wide cost for a wide option, not
            only those the search gains from (WIDE_MIN_MS, WIDE_MAX_RATIO).

    Returns:
        (task graph, node name of each task).

    Raises:
        PlanError: a lane the profile does not have, a node it does not cost, a node no lane
            can run, or a missing transfer cost between two lanes that need one.
    """
    lanes = list(devices) if devices is not None else list(profile.devices)
    unknown = [d for d in lanes if d not in profile.devices]
    if unknown:
        raise PlanError(f"the profile has no lane {unknown[0]!r}; it has {list(profile.devices)}")
    share = shares_memory or cpu_lanes_share_memory
    nodes = schedulable_nodes(gm)
    index = {n: k for k, n in enumerate(nodes)}
    names = [n.name for n in nodes]
    cost = []
    for n in nodes:
        if n.name not in profile.node_ms:
            raise PlanError(f"the profile has no cost for node {n.name!r} ({n.target})")
        row = profile.node_ms[n.name]
        cost.append([float(row.get(d, math.inf)) for d in lanes])
    links = []
    for a in lanes:
        for b in lanes:
            if a != b and not share(a, b):
                if f"{a}->{b}" not in profile.transfer:
                    raise PlanError(f"the profile has no transfer cost for {a}->{b}")
                latency, bytes_per_ms = profile.transfer[f"{a}->{b}"]
                links.append((float(latency), float(bytes_per_ms)))
    edge_bytes: dict[tuple[int, int], int] = {}
    for v in nodes:
        for arg in v.all_input_nodes:
            u = producer_of(arg)
            if u is None or u is v:
                continue
            key = (index[u], index[v])
            edge_bytes[key] = edge_bytes.get(key, 0) + node_out_bytes(arg)
    edges = {
        key: max((lat + nbytes / bw for lat, bw in links), default=0.0) if nbytes else 0.0
        for key, nbytes in edge_bytes.items()
    }
    wide_lanes = list(getattr(profile, "wide_lanes", []) or [])
    wide_ms = getattr(profile, "wide_ms", {}) or {}
    wide_cost = None
    paired_ms = getattr(profile, "paired_ms", {}) or {}
    paired_slowdown = None
    if wide_lanes and all(d in lanes for d in wide_lanes) and paired_ms:
        first = lanes.index(wide_lanes[0])
        paired_slowdown = [
            max(1.0, paired_ms.get(n.name, 0.0) / cost[k][first]) if cost[k][first] > 0 else 1.0
            for k, n in enumerate(nodes)
        ]
    if wide_lanes and all(d in lanes for d in wide_lanes):
        first = lanes.index(wide_lanes[0])
        wide_cost = [
            float(wide_ms[n.name])
            if n.name in wide_ms
            and (
                every_wide_cost
                or WIDE_MIN_MS <= cost[k][first]
                and wide_ms[n.name] <= WIDE_MAX_RATIO * cost[k][first]
            )
            else math.inf
            for k, n in enumerate(nodes)
        ]
        if any(math.isfinite(ms) for ms in wide_cost):
            wide_cost = [
                cost[k][first] if math.isinf(ms) and runs_alike_on_any_thread(n) else ms
                for k, (n, ms) in enumerate(zip(nodes, wide_cost, strict=True))
            ]
    graph = TaskGraph(
        np.asarray(cost, dtype=np.float64).reshape(len(nodes), len(lanes)),  # (0, lanes) if empty
        edges,
        devices=lanes,
        weight_bytes=[int(n.meta.get("chrion_weight_bytes", 0)) for n in nodes],
        out_bytes=[node_out_bytes(n) for n in nodes],
        shares_memory=share,
        names=names,
        wide_cost=wide_cost,
        wide_lanes=wide_lanes if wide_cost is not None else None,
        paired_slowdown=paired_slowdown,
    )
    return graph, names
