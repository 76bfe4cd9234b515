"""A discrete-event simulator that replays any Schedule and scores it.

Only the placement (``device``) and the per-device order (``order``) of a Schedule are replayed;
its times are recomputed. Events are task finishes and data arrivals (a finish plus the edge's
transfer time when the two devices do not share memory), taken from a heap in time order.
A device that is idle starts the next task of its order as soon as all of that task's inputs
have arrived. Every algorithm (HEFT, solve, the MILP) is scored by this one function.

A wide task (Note [Chrion wide placement] in task_graph.py) is in the order of every lane it
holds; it starts when each of those lanes is free and has it next, and frees them all when it
ends, as the executor runs it: a thread of its own runs it while those lanes wait. That thread
is the caller's when the wide lane has the caller's thread count (``inline_lanes`` lanes; Note
[Chrion caller lane] in csrc/executor/executor.cpp): the caller, busy with those tasks, parks
only once it has waited longer than ``spin_ms`` after the last of them.

Given ``ExecutorCosts`` (measured by ``torch_chrion.runtime.calibrate``), the replay is what the
executor does rather than the ideal the schedulers assume: every step pays the executor's fixed
cost on top of its operator's, a consumer on another lane of the same memory pays the time to
wake that lane, a value crosses to another memory once per destination (one copy step, shared by
its readers there) on that direction's single copy stream, so copies in one direction queue
behind each other, and the call pays its fixed entry and exit cost. A lane's next task that
another lane's thread runs (a wide task led elsewhere, or a lane's first task after a wide task)
pays the wake-up as well: the thread that finished the lane's previous task hands it over (a
wide task is always handed over, and so is the next task of each lane it held).

An idle lane thread polls for work for ``spin_ms`` before it parks, and so does the caller
waiting for its call (Note [Chrion spin before park] in csrc/executor/lane.h): a consumer handed
to a lane idle for longer than that, and a call that takes longer than that, also pay
``wake_ms``, the time a parked thread takes to run again. Lanes are taken to be polling when a
call starts (calls back to back). A plan whose every task runs on one host runner with as many
threads as its caller has runs inline: the caller runs the steps itself (Note [Chrion inline
requests] in csrc/executor/executor.cpp), so the call costs ``inline_call_ms`` and nobody waits
for it to end.

The host lanes' threads share the ``cores`` the process gets on the machine (other processes
take the rest): while the running host tasks hold more threads than that (a wide task holds one
per lane), each runs at ``cores / threads`` of its speed (processor sharing, as the OS
time-slices them), so on a machine whose other core is busy, two tasks placed side by side take
as long as one after the other. An accelerator lane's task is the device's time and shares no
core.

The caller runs its wide tasks in its own OpenMP team, whose other threads poll for the next
parallel region for ``team_spin_ms`` after each one (libgomp's spin-wait) unless the caller opens
another first. Meanwhile they hold cores: each takes one from the lanes' threads until the
caller's next wide task, or the end of its spin. After a wide layer, the two directions of the
next bidirectional layer, one per lane, then shared the one core left (in a trace of a
DeepSpeech2-like model, one direction started 1.2 ms late, when the other had finished, on a plan
that predicted 6.3 ms).

A task on one host lane may also run slower while another host lane runs a task beside it, by
its graph's ``paired_slowdown`` (measured in the profile: the node's time beside a copy of its
graph running on another lane at once, over its time alone): what the cores share besides
their count (caches, memory, the host under a VM), which ``cores`` does not see. The quiet run
of bench/results/predict.md traced the bi-GRU's side-by-side directions 26% above their
one-lane profile, where side-by-side tanh chains (the calibration's cores) lost under 7%. A wide
task holds its lanes, whose threads its own cost already includes. This too is the executor's
replay only (with ``costs``).
"""

from __future__ import annotations

import dataclasses
import heapq
import math

import numpy as np

from ..errors import PlanError
from .memory import resident_bytes
from .task_graph import Schedule, TaskGraph

_FINISH, _ARRIVAL, _LANE_FREE, _TEAM_SLEEPS = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class ExecutorCosts:
    """The executor's own costs, in ms (see ``torch_chrion.runtime.calibrate``).

    Attributes:
        step_ms: per step, beyond its operator's profiled time (dependency counts, hand-off to
            the lane's next step).
        handoff_ms: extra for a consumer on another lane than its producer (waking that lane).
        call_ms: per call (entering the executor, scheduling the first steps, waking the caller).
        wake_ms: extra to resume a parked thread: a lane idle for longer than ``spin_ms`` that
            another lane hands a consumer, and the caller of a call longer than ``spin_ms``.
        spin_ms: how long an idle lane or a waiting caller polls before it parks.
        caller_wake_ms: extra for a call that outlasts ``spin_ms``: its caller parks while the
            steps run, and its lanes park between its last step and the next call's first
            (threads parked that long cost more to resume than ``wake_ms``; 0: ``wake_ms``).
        cores: cores the lanes' threads get (inf: one each, whatever runs).
        inline_call_ms: per call of a plan that runs inline (every task on one host runner
            that holds ``inline_lanes`` CPU lanes, hence the caller's thread count).
        inline_lanes: the CPU lanes of a runner whose plans run inline (0: none do).
        team_spin_ms: how long the other threads of the caller's OpenMP team poll for the next
            parallel region after a wide task the caller ran, each holding a core (0: they
            sleep at once).
    """

    step_ms: float = 0.0
    handoff_ms: float = 0.0
    call_ms: float = 0.0
    wake_ms: float = 0.0
    spin_ms: float = 0.0
    caller_wake_ms: float = 0.0
    cores: float = math.inf
    inline_call_ms: float = 0.0
    inline_lanes: int = 0
    team_spin_ms: float = 0.0


def runs_inline(graph: TaskGraph, schedule: Schedule, costs: ExecutorCosts) -> bool:
    """Whether the executor runs every call of ``schedule`` on its caller's thread."""
    options = set(schedule.device)
    if costs.inline_lanes <= 0 or len(options) != 1:
        return False
    (option,) = options
    return (
        not graph.option_is_accelerator[option]
        and len(graph.option_lanes[option]) == costs.inline_lanes
    )


@dataclasses.dataclass
class Simulation:
    """What replaying a Schedule gives.

    Attributes:
        makespan: finish time of the last task.
        start, finish: per task.
        busy: per device, the time it spends running tasks.
        peak_bytes: per device, resident bytes (weights + peak activations, see memory.py).
        accelerator_bytes: ``peak_bytes`` summed over the accelerator devices.
    """

    makespan: float
    start: list[float]
    finish: list[float]
    busy: list[float]
    peak_bytes: list[float]
    accelerator_bytes: float


def check_schedule_shape(graph: TaskGraph, schedule: Schedule) -> None:
    """Each task in the order of each device its placement holds (once), and nowhere else, on
    an option that can run it."""
    if len(schedule.device) != graph.n or len(schedule.order) != graph.m:
        raise PlanError(
            f"schedule has {len(schedule.device)} tasks and {len(schedule.order)} device orders;"
            f" the graph has {graph.n} tasks and {graph.m} devices"
        )
    options = len(graph.option_lanes)
    for i, o in enumerate(schedule.device):
        if not 0 <= o < options:
            raise PlanError(f"task {graph.names[i]!r} is placed on unknown option {o}")
        if not np.isfinite(graph.option_cost[i, o]):
            raise PlanError(
                f"task {graph.names[i]!r} cannot run on device {graph.option_name(o)!r}"
            )
    seen = [0] * graph.n
    for d, tasks in enumerate(schedule.order):
        on_d: set[int] = set()
        for i in tasks:
            if not 0 <= i < graph.n:
                raise PlanError(f"device {graph.devices[d]!r} lists unknown task {i}")
            if i in on_d:
                raise PlanError(f"task {graph.names[i]!r} is ordered twice")
            on_d.add(i)
            if d not in graph.option_lanes[schedule.device[i]]:
                raise PlanError(
                    f"task {graph.names[i]!r} is placed on "
                    f"{graph.option_name(schedule.device[i])!r} but ordered on {d}"
                )
            seen[i] += 1
    for i in range(graph.n):
        if seen[i] != len(graph.option_lanes[schedule.device[i]]):
            where = "no device's order" if not seen[i] else "the order of only some of its lanes"
            raise PlanError(f"task {graph.names[i]!r} is in {where}")


def simulate(
    graph: TaskGraph, schedule: Schedule, costs: ExecutorCosts | None = None
) -> Simulation:
    """Replay ``schedule`` event by event.

    Args:
        graph: the task graph.
        schedule: the placement and per-device orders to replay.
        costs: the executor's own costs; None replays the ideal model every scheduler uses
            (no fixed costs, copies never queue), which equals their own times.

    Raises:
        PlanError: a task missing, ordered twice or on a device that cannot run it, or orders
            that deadlock (a device waits for a task that is queued behind it).
    """
    check_schedule_shape(graph, schedule)
    n, m = graph.n, graph.m
    cost = graph.option_cost.tolist()
    step = costs.step_ms if costs else 0.0
    handoff = costs.handoff_ms if costs else 0.0
    wake = costs.wake_ms if costs else 0.0
    spin = costs.spin_ms if costs else 0.0
    cores = costs.cores if costs else math.inf
    group = graph.option_group
    device = list(schedule.device)
    lanes_of = [graph.option_lanes[o] for o in device]
    # how much slower a task on one host lane runs while another host task runs beside it
    slowdown = [1.0] * n
    if costs is not None and graph.paired_slowdown is not None:
        slowdown = [
            float(f) if len(lanes_of[i]) == 1 else 1.0 for i, f in enumerate(graph.paired_slowdown)
        ]
    # else every host lane's thread has a core and runs at its own speed: finish times are
    # fixed at start (an accelerator lane's task is the device's time, not its thread's, and
    # shares no core)
    host_lanes = m - int(graph.is_accelerator.sum())
    # the wide tasks the caller runs itself, in its team (those of a runner with its thread
    # count), and how long that team's other threads poll after each
    in_team = [
        costs is not None
        and costs.inline_lanes > 1
        and len(lanes_of[i]) == costs.inline_lanes
        and not graph.option_is_accelerator[device[i]]
        for i in range(n)
    ]
    team_spin = costs.team_spin_ms if costs is not None and not all(in_team) else 0.0
    team_polls_until = -math.inf  # the team's other threads hold a core each until then
    sharing = (
        cores < host_lanes or any(f > 1.0 for f in slowdown) or (team_spin > 0.0 and any(in_team))
    )
    remaining = [0.0] * n  # work left of a running task (sharing only)
    running: dict[int, int] = {}  # running task -> its threads (sharing only)
    live = [-1] * n  # the seq of a running task's current finish event (sharing only)
    rate = [1.0] * n  # the speed of each running task (sharing only)
    updated = 0.0  # since when the running tasks have had those speeds
    shared_by: set[int] = set()  # the running tasks the current speeds were set for
    idle_since = [0.0] * m  # lanes poll at the start of a call (calls back to back)
    wide_idle_since: dict[int, float] = {}  # a wide task's own thread -> its last finish
    copy_free: dict[tuple[int, int], float] = {}  # (from group, to group) -> copy stream free
    shares = [sharing and not graph.option_is_accelerator[o] for o in device]
    # the thread that runs each task: its lane's, or for a wide task the wide lane's own thread
    runner = [lanes[0] if len(lanes) == 1 else m + device[i] for i, lanes in enumerate(lanes_of)]
    order = schedule.order
    succs, succ_cost = graph.succs, graph.succ_cost
    missing = [len(p) for p in graph.preds]
    next_pos = [0] * m
    idle = [True] * m
    start = [0.0] * n
    finish = [0.0] * n
    events: list[tuple[float, int, int, int]] = []
    seq = 0
    done = 0
    now = 0.0

    def start_ready_tasks() -> None:
        nonlocal seq, team_polls_until
        for d in range(m):
            if idle[d] and next_pos[d] < len(order[d]):
                i = order[d][next_pos[d]]
                if missing[i] != 0:
                    continue
                lanes = lanes_of[i]
                if len(lanes) > 1 and not all(
                    idle[e] and next_pos[e] < len(order[e]) and order[e][next_pos[e]] == i
                    for e in lanes
                ):
                    continue  # a wide task waits for every lane it holds
                for e in lanes:
                    idle[e] = False
                    next_pos[e] += 1
                if in_team[i]:
                    team_polls_until = -math.inf  # the team's threads run this one
                start[i] = now
                if shares[i]:  # its finish follows from the shares (reshare)
                    remaining[i] = cost[i][device[i]] + step
                    running[i] = len(lanes)
                    continue
                finish[i] = now + cost[i][device[i]] + step
                heapq.heappush(events, (finish[i], _FINISH, seq, i))
                seq += 1

    def advance() -> None:
        """The running tasks' work done since the last event, at the speed they had."""
        nonlocal updated
        for j in running:
            remaining[j] -= (now - updated) * rate[j]
        updated = now

    def reshare() -> None:
        """The running tasks' finish events at the speed they have now (earlier ones are
        stale): each thread's share of the cores, or a task's paired slowdown while another
        runs beside it, whichever is slower: the paired profile measured the task beside
        another, on however many cores the process had then, so it already holds what a
        shortage of cores costs it (charging both made the quiet run of
        bench/results/predict.md over-predict by up to 36%, and a pair on one core slower than
        the two one after the other)."""
        nonlocal seq
        threads = sum(running.values())
        free = min(cores, host_lanes)
        if now < team_polls_until:
            free = max(free - (costs.inline_lanes - 1), 1.0)  # type: ignore[union-attr]
        share = min(1.0, free / threads) if threads else 1.0
        for j in running:
            rate[j] = min(share, 1.0 / slowdown[j]) if len(running) > 1 else share
            heapq.heappush(events, (now + max(remaining[j], 0.0) / rate[j], _FINISH, seq, j))
            live[j] = seq
            seq += 1

    def parked(thread: int) -> bool:
        """Whether the thread of lane ``thread`` (or, from m on, a wide task's own thread) has
        been idle for longer than its spin."""
        if thread >= m:
            return now - wide_idle_since.get(thread, 0.0) > spin
        return idle[thread] and now - idle_since[thread] > spin

    def free_lanes(i: int) -> None:
        """Task i is done: its lanes take their next task, after a wake-up where another
        lane's thread runs that task."""
        nonlocal seq
        for d in lanes_of[i]:
            after = order[d][next_pos[d]] if next_pos[d] < len(order[d]) else -1
            if after < 0 or handoff == 0.0 or runner[after] == runner[i]:
                idle[d] = True
                idle_since[d] = now
            else:
                heapq.heappush(events, (now + handoff, _LANE_FREE, seq, d))
                seq += 1

    start_ready_tasks()
    if sharing:
        reshare()
    while events:
        now = events[0][0]
        if sharing:
            advance()
            shared_by = set(running)
        team_slept = False
        while events and events[0][0] == now:
            _, kind, at_seq, i = heapq.heappop(events)
            if kind == _FINISH and shares[i]:
                if live[i] != at_seq:
                    continue  # the share changed since this finish was foreseen
                running.pop(i)
                finish[i] = now
            if kind == _ARRIVAL:
                missing[i] -= 1
                continue
            if kind == _LANE_FREE:
                idle[i] = True
                idle_since[i] = now
                continue
            if kind == _TEAM_SLEEPS:
                team_slept = True  # the cores it held are free again: the shares change
                continue
            if in_team[i] and team_spin > 0.0:
                team_polls_until = now + team_spin
                heapq.heappush(events, (team_polls_until, _TEAM_SLEEPS, seq, i))
                seq += 1
            done += 1
            if runner[i] >= m:
                wide_idle_since[runner[i]] = now
            free_lanes(i)
            g = group[device[i]]
            ss, sc = succs[i], succ_cost[i]
            if costs is None:
                for k in range(len(ss)):
                    v = ss[k]
                    if group[device[v]] == g or sc[k] == 0.0:
                        missing[v] -= 1
                    else:
                        heapq.heappush(events, (now + sc[k], _ARRIVAL, seq, v))
                        seq += 1
                continue
            copies: dict[int, float] = {}  # destination group -> time of its one copy
            for k in range(len(ss)):
                gv = group[device[ss[k]]]
                if gv != g and sc[k] > 0.0:
                    copies[gv] = max(copies.get(gv, 0.0), sc[k])
            for gv, took in copies.items():
                landed = max(now, copy_free.get((g, gv), 0.0)) + took
                copy_free[(g, gv)] = landed
                copies[gv] = landed
            for k in range(len(ss)):
                v = ss[k]
                gv = group[device[v]]
                if gv in copies:
                    at = copies[gv]
                elif runner[v] != runner[i]:
                    at = now + handoff + (wake if parked(runner[v]) else 0.0)
                else:
                    at = now
                if at == now:
                    missing[v] -= 1
                else:
                    heapq.heappush(events, (at, _ARRIVAL, seq, v))
                    seq += 1
        start_ready_tasks()
        if sharing and (set(running) != shared_by or team_slept):
            reshare()
    if done != n:
        stuck = [
            f"{graph.devices[d]} waits on task {graph.names[order[d][next_pos[d]]]!r}"
            for d in range(m)
            if next_pos[d] < len(order[d])
        ]
        raise PlanError(
            "schedule deadlocks (an order contradicts a dependency): " + "; ".join(stuck)
        )
    busy = [float(sum(cost[i][device[i]] + step for i in order[d])) for d in range(m)]
    inline = costs is not None and runs_inline(graph, schedule, costs)
    if costs is not None and n:
        # the call's entry before the first step; the exit is in makespan
        shift = costs.inline_call_ms if inline else costs.call_ms
        start = [t + shift for t in start]
        finish = [t + shift for t in finish]
    peak = resident_bytes(graph, device, start, finish)
    accel = float(peak[graph.is_accelerator].sum()) if graph.is_accelerator.any() else 0.0
    makespan = max(finish) if n else (costs.call_ms if costs else 0.0)
    if costs is not None and not inline:
        # the caller runs the wide tasks of a runner with its thread count itself
        busy_until = max((finish[i] for i in range(n) if in_team[i]), default=0.0)
        if makespan - busy_until > spin:
            makespan += costs.caller_wake_ms or wake  # it parked before the last step ended
    return Simulation(
        makespan=makespan,
        start=start,
        finish=finish,
        busy=busy,
        peak_bytes=peak.tolist(),
        accelerator_bytes=accel,
    )


def rescore(graph: TaskGraph, schedule: Schedule) -> Schedule:
    """A copy of ``schedule`` with the simulator's times, makespan and accelerator bytes."""
    sim = simulate(graph, schedule)
    return dataclasses.replace(
        schedule,
        start=sim.start,
        finish=sim.finish,
        makespan=sim.makespan,
        accelerator_bytes=sim.accelerator_bytes,
        slo_met=None if schedule.slo is None else sim.makespan <= schedule.slo,
    )
