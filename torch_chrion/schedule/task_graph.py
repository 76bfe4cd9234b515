"""TaskGraph: the scheduling problem, and Schedule: one answer to it.

A TaskGraph is a DAG of tasks with a cost per (task, device) and a transfer time per edge. It
knows nothing about PyTorch: anyone with a task graph can build one by hand
(``from_graph.task_graph_from`` builds one from an aten graph and a Profile).

Devices are named lanes. Two lanes may share memory (two CPU lanes do): an edge between them
costs nothing, only ordering. Devices whose name starts with ``accelerator_prefix`` ("cuda" by
default) are the accelerators whose resident bytes the memory objective minimises.

Note [Chrion wide placement]
A task may also be placed "wide": on every lane of ``wide_lanes`` at once (CPU lanes, one
memory), with its own cost ``wide_cost[i]`` (measured with the intra-op threads of all of them
on one thread). It starts when all of those lanes are free and holds all of them until it
finishes: the executor runs it on a thread of its own with all their threads while the lanes
wait (Note [Chrion wide steps] in csrc/executor/program.cpp). The first lane, its leader, is
where the plan places it and its memory is counted. The schedulers see it as one more
placement option, index ``graph.wide_option`` (= m, after the lanes): ``option_cost``,
``option_group`` and ``option_lanes`` describe every option, and ``runnable_on`` lists it for the
tasks that have a wide cost. A Schedule that places task i wide has ``device[i] == wide_option``,
and lists i in the order of every lane it holds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import PlanError

SharesMemory = Callable[[str, str], bool]


def cpu_lanes_share_memory(a: str, b: str) -> bool:
    """Default memory rule: a lane shares memory with itself, and every CPU lane with every other."""
    return a == b or (a.startswith("cpu") and b.startswith("cpu"))


class TaskGraph:
    """A DAG of tasks to place on heterogeneous devices.

    Args:
        cost: ``cost[i][d]`` is task i's run time on device d; ``inf`` where it cannot run there.
        edges: ``{(u, v): t}``: v needs u's output; t is the transfer time paid when u and v are
            on devices that do not share memory (zero otherwise).
        devices: device names, one per column of ``cost``; default "d0", "d1", ...
        weight_bytes: bytes of weights task i keeps on the device it is placed on (memory
            objective); default zeros.
        out_bytes: bytes of task i's output; default zeros.
        shares_memory: ``f(a, b) -> bool`` or a boolean device x device matrix telling which
            device pairs share memory; default: CPU lanes share, every other pair does not.
        accelerator_prefix: devices whose name starts with it count as accelerators.
        names: optional task names used in error messages and pictures.
        wide_cost: ``wide_cost[i]`` is task i's run time placed wide (Note [Chrion wide
            placement]); ``inf`` where it has no wide option. None: no task has one.
        wide_lanes: the devices a wide task holds, its leader first; at least two, sharing one
            memory, none an accelerator. Required with ``wide_cost``.
        paired_slowdown: ``paired_slowdown[i]`` (at least 1) is how many times slower task i
            runs on a host lane while another host lane runs a task beside it (the simulator's
            executor replay uses it). None: none is.

    Raises:
        PlanError: bad shapes, negative costs, a task no device can run, an edge to an unknown
            task, or a cycle (found in linear time, naming a task on it).
    """

    def __init__(
        self,
        cost: Sequence[Sequence[float]] | np.ndarray,
        edges: Mapping[tuple[int, int], float],
        devices: Sequence[str] | None = None,
        weight_bytes: Sequence[float] | np.ndarray | None = None,
        out_bytes: Sequence[float] | np.ndarray | None = None,
        shares_memory: SharesMemory | Sequence[Sequence[bool]] | np.ndarray | None = None,
        accelerator_prefix: str = "cuda",
        names: Sequence[str] | None = None,
        wide_cost: Sequence[float] | np.ndarray | None = None,
        wide_lanes: Sequence[str] | None = None,
        paired_slowdown: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        cost_arr = np.asarray(cost, dtype=np.float64)
        if cost_arr.ndim != 2 or cost_arr.shape[1] == 0:
            raise PlanError(f"cost must be a tasks x devices table, got shape {cost_arr.shape}")
        n, m = cost_arr.shape
        self.cost = cost_arr
        self.n, self.m = n, m
        self.devices = tuple(devices) if devices is not None else tuple(f"d{d}" for d in range(m))
        if len(self.devices) != m or len(set(self.devices)) != m:
            raise PlanError(
                f"devices {list(self.devices)} do not name the {m} cost columns once each"
            )
        self.names = tuple(names) if names is not None else tuple(str(i) for i in range(n))
        if len(self.names) != n:
            raise PlanError(f"names has {len(self.names)} entries for {n} tasks")
        if np.isnan(cost_arr).any() or (cost_arr < 0).any():
            bad = int(np.argwhere(np.isnan(cost_arr) | (cost_arr < 0))[0][0])
            raise PlanError(f"task {self.names[bad]!r} has a negative or NaN cost")
        runnable = np.isfinite(cost_arr)
        if n and not runnable.any(axis=1).all():
            bad = int(np.flatnonzero(~runnable.any(axis=1))[0])
            raise PlanError(f"task {self.names[bad]!r} cannot run on any device")
        self.weight_bytes = _per_task(weight_bytes, n, "weight_bytes")
        self.out_bytes = _per_task(out_bytes, n, "out_bytes")
        self.accelerator_prefix = accelerator_prefix
        self.is_accelerator = np.array([d.startswith(accelerator_prefix) for d in self.devices])
        self.memory_group = _memory_groups(self.devices, shares_memory)
        self.edges: dict[tuple[int, int], float] = {}
        self.preds: list[list[int]] = [[] for _ in range(n)]
        self.pred_cost: list[list[float]] = [[] for _ in range(n)]
        self.succs: list[list[int]] = [[] for _ in range(n)]
        self.succ_cost: list[list[float]] = [[] for _ in range(n)]
        for (u, v), c in edges.items():
            u, v, c = int(u), int(v), float(c)
            if not (0 <= u < n and 0 <= v < n) or u == v:
                raise PlanError(f"edge ({u}, {v}) does not join two distinct tasks of 0..{n - 1}")
            if not (c >= 0 and math.isfinite(c)):
                raise PlanError(f"edge ({u}, {v}) has transfer time {c}; it must be finite >= 0")
            self.edges[(u, v)] = c
            self.preds[v].append(u)
            self.pred_cost[v].append(c)
            self.succs[u].append(v)
            self.succ_cost[u].append(c)
        self.topo_order = self._topological_order()
        # devices each task can run on, and the memory groups, as plain lists for the hot loops
        self.runnable_on: list[list[int]] = [
            [int(d) for d in np.flatnonzero(row)] for row in runnable
        ]
        self.cross_memory = bool(len(set(self.memory_group)) > 1)
        self._add_wide_option(wide_cost, wide_lanes)
        self.paired_slowdown: np.ndarray | None = None
        if paired_slowdown is not None:
            slowdown = np.asarray(paired_slowdown, dtype=np.float64)
            if slowdown.shape != (n,) or not (np.isfinite(slowdown) & (slowdown >= 1.0)).all():
                raise PlanError(
                    f"paired_slowdown must hold one finite number of at least 1 per task ({n})"
                )
            self.paired_slowdown = slowdown

    def _add_wide_option(
        self, wide_cost: Sequence[float] | np.ndarray | None, wide_lanes: Sequence[str] | None
    ) -> None:
        """The placement options: each device alone, then the wide option if any task has one."""
        n, m = self.n, self.m
        self.option_lanes: list[tuple[int, ...]] = [(d,) for d in range(m)]
        self.option_group: list[int] = list(self.memory_group)
        self.option_is_accelerator: list[bool] = [bool(a) for a in self.is_accelerator]
        self.wide_option: int | None = None
        self.wide_lanes: tuple[int, ...] = ()
        self.wide_cost: np.ndarray | None = None
        if wide_cost is None:
            if wide_lanes is not None:
                raise PlanError("wide_lanes given without wide_cost")
            return
        wide = np.asarray(wide_cost, dtype=np.float64)
        if wide.shape != (n,) or np.isnan(wide).any() or (wide < 0).any():
            raise PlanError(
                f"wide_cost must hold one non-negative number (or inf) per task ({n}), "
                f"got shape {wide.shape}"
            )
        lanes = list(wide_lanes or ())
        unknown = [d for d in lanes if d not in self.devices]
        if unknown:
            raise PlanError(f"wide lane {unknown[0]!r} is not one of {list(self.devices)}")
        index = [self.devices.index(d) for d in lanes]
        if len(set(index)) != len(index) or len(index) < 2:
            raise PlanError(f"wide_lanes must name at least two distinct lanes, got {lanes}")
        if len({self.memory_group[d] for d in index}) != 1 or self.is_accelerator[index].any():
            raise PlanError(f"wide_lanes {lanes} must be host lanes sharing one memory")
        self.wide_option = m
        self.wide_lanes = tuple(index)
        self.option_lanes.append(self.wide_lanes)
        self.option_group.append(self.memory_group[index[0]])
        self.option_is_accelerator.append(False)
        self.wide_cost = wide
        for i in np.flatnonzero(np.isfinite(wide)):
            self.runnable_on[int(i)].append(m)

    @property
    def option_cost(self) -> np.ndarray:
        """``cost`` with a last column for the wide option, if there is one (tasks x options)."""
        if self.wide_cost is None:
            return self.cost
        return np.concatenate([self.cost, self.wide_cost[:, None]], axis=1)

    def with_cost(self, cost: np.ndarray) -> TaskGraph:
        """The same graph (edges, bytes, memories, wide option) with other device costs."""
        return TaskGraph(
            cost,
            self.edges,
            devices=self.devices,
            weight_bytes=self.weight_bytes,
            out_bytes=self.out_bytes,
            shares_memory=[
                [self.memory_group[a] == self.memory_group[b] for b in range(self.m)]
                for a in range(self.m)
            ],
            accelerator_prefix=self.accelerator_prefix,
            names=self.names,
            wide_cost=self.wide_cost,
            wide_lanes=[self.devices[d] for d in self.wide_lanes] if self.wide_lanes else None,
            paired_slowdown=self.paired_slowdown,
        )

    def lane_of(self, option: int) -> int:
        """The device that runs a task placed on ``option`` (a wide task's leader)."""
        return self.option_lanes[option][0]

    def runners(self, placement: Sequence[int]) -> Sequence[int]:
        """The device that runs each task of a placement (a wide task's leader): memory is
        counted there."""
        if self.wide_option is None:
            return placement
        leader = self.wide_lanes[0]
        return [leader if o == self.wide_option else o for o in placement]

    def option_name(self, option: int) -> str:
        """A device's name, or "wide" joined names of the wide lanes."""
        return "+".join(self.devices[d] for d in self.option_lanes[option])

    def _topological_order(self) -> list[int]:
        """Kahn's algorithm: linear time; a cycle is reported by naming a task on it."""
        indeg = [len(p) for p in self.preds]
        ready = [i for i in range(self.n) if indeg[i] == 0]
        order: list[int] = []
        while ready:
            u = ready.pop()
            order.append(u)
            for v in self.succs[u]:
                indeg[v] -= 1
                if indeg[v] == 0:
                    ready.append(v)
        if len(order) != self.n:
            stuck = next(i for i in range(self.n) if indeg[i] > 0)
            # walk predecessors that are still blocked until one repeats: that task is on a cycle
            seen: set[int] = set()
            while stuck not in seen:
                seen.add(stuck)
                stuck = next(p for p in self.preds[stuck] if indeg[p] > 0)
            raise PlanError(f"the task graph has a cycle through task {self.names[stuck]!r}")
        return order

    def transfer(self, u: int, v: int, du: int, dv: int) -> float:
        """Transfer time of edge (u, v) when u runs on option du and v on dv."""
        if self.option_group[du] == self.option_group[dv]:
            return 0.0
        return self.edges[(u, v)]

    def accelerators(self) -> list[int]:
        """Indices of the accelerator devices."""
        return [int(d) for d in np.flatnonzero(self.is_accelerator)]

    def __repr__(self) -> str:
        return f"TaskGraph({self.n} tasks, {len(self.edges)} edges, devices={list(self.devices)})"


def _per_task(values: Any, n: int, what: str) -> np.ndarray:
    if values is None:
        return np.zeros(n, dtype=np.float64)
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,) or np.isnan(arr).any() or (arr < 0).any():
        raise PlanError(f"{what} must hold one non-negative number per task ({n}), got {arr.shape}")
    return arr


def _memory_groups(
    devices: tuple[str, ...], shares: SharesMemory | Sequence[Sequence[bool]] | np.ndarray | None
) -> list[int]:
    """Group id per device; devices of one group share memory (the relation is closed
    transitively, since shared memory is an equivalence)."""
    m = len(devices)
    if shares is None:
        shares = cpu_lanes_share_memory
    if callable(shares):
        matrix = [[bool(shares(a, b)) for b in devices] for a in devices]
    else:
        matrix = [[bool(x) for x in row] for row in shares]
        if len(matrix) != m or any(len(row) != m for row in matrix):
            raise PlanError(f"shares_memory must be a {m} x {m} matrix for devices {list(devices)}")
    group = list(range(m))

    def find(a: int) -> int:
        while group[a] != a:
            group[a] = group[group[a]]
            a = group[a]
        return a

    for a in range(m):
        for b in range(m):
            if matrix[a][b]:
                group[find(a)] = find(b)
    roots = [find(a) for a in range(m)]
    renumber = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return [renumber[r] for r in roots]


@dataclasses.dataclass
class Schedule:
    """Where and when every task runs.

    Attributes:
        device: placement option of each task: a device index, or ``graph.wide_option`` for a
            task placed wide (Note [Chrion wide placement]).
        start: start time of each task.
        finish: finish time of each task.
        order: for each device, its tasks in the order it runs them (a wide task in the order
            of each device it holds).
        makespan: finish time of the last task.
        algorithm: what produced it ("heft", "solve", "milp", ...).
        objective: "latency" or "memory".
        slo: the makespan bound asked for, if any.
        slo_met: whether ``makespan <= slo`` (None without an SLO).
        accelerator_bytes: bytes resident on the accelerators (weights plus peak activations),
            as the simulator measures them.
    """

    device: list[int]
    start: list[float]
    finish: list[float]
    order: list[list[int]]
    makespan: float
    algorithm: str = ""
    objective: str = "latency"
    slo: float | None = None
    slo_met: bool | None = None
    accelerator_bytes: float | None = None
