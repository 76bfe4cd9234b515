"""Device graphs: each run of a device lane's steps captured once and replayed per call.

Note [Device graph segments]
At batch 1 a GPU lane is bound by kernel launches, not by the GPU: a recurrent layer launches
kernels per time step, and eager cuda:0 took 3.3 ms on the demo model on an H100 where the host
CPU needs about 1 ms (issue #16). So before lowering, ``group_segments`` cuts each device lane's
nodes, in the plan's order, into segments and replaces each segment with one node that calls a
``CapturedSegment``: the segment's nodes as a small GraphModule, run as one step (a Python step
on the lane's thread) that replays a graph of all their kernels.

A segment is a run of consecutive nodes of one device lane (in plan order) that:
- are ATen / chrion operator calls that write no argument (no Python callable, no ONNX
  If / Loop / Scan, whose trip counts and branches are read on the host, no in-place op);
- after its first node, read only values of the segment itself, of earlier nodes of the same
  lane, graph inputs and weights. A value from another lane (through a copy step) ends the
  segment, so no node waits for a copy it did not wait for in the plan; a segment cannot form
  a cycle with the nodes outside it, since everything it reads from outside is ready when its
  first node is;
- has a recurrent node or at least two nodes (one small kernel gains nothing from a graph and
  pays the copies in and out).

Per call a segment copies its inputs into the tensors it was captured with and replays; its
outputs are the captured ones, cloned, since the next replay writes them again. Captures are
kept per input signature (shapes, strides, dtypes, devices and non-tensor values), at most
``MAX_CAPTURES``; a signature is run eagerly the first time (warming up what cannot be
captured: cuBLAS handles, cuDNN workspaces), captured and replayed the second, replayed from
then on. Everything runs on the lane's stream, so replays of concurrent requests are ordered
and never overlap. A segment whose capture fails runs eagerly from then on: the failure is
warned once, with the segment and the reason, and kept in its ``status``.

Without a GPU the protocol is exercised on the executor's test-only device ("fake:N") by
``RecordedCapture``, which has a CUDA graph's semantics: capture records every operator call
with the tensors it read and wrote and computes nothing that is kept (what it writes is then
filled with NaN), and replay calls them again writing into the same tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import operator
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from ..graph.nodes import is_schedulable
from ..ops.python_call import is_python_call, shares_memory

MAX_CAPTURES = 8  # input signatures captured per segment; more run eagerly
MAX_WARMED = 64  # signatures run once and remembered, waiting for a second call

# recurrent operators, and the position of their list of weights
RECURRENT_PARAMS = {"chrion::lstm": 3, "chrion::gru": 2, "chrion::rnn": 2}


class CudaCapture:
    """A CUDA graph (torch.cuda.CUDAGraph) captured on the current stream, the lane's own."""

    def __init__(self) -> None:
        self._graph = torch.cuda.CUDAGraph()

    def capture(self, fn: Callable[..., Any], inputs: Sequence[Any]) -> Any:
        # thread_local: the other lanes' threads (and the copy completer's event waits) go on
        # while this thread captures
        self._graph.capture_begin(capture_error_mode="thread_local")
        try:
            outputs = fn(*inputs)
        except BaseException:
            with contextlib.suppress(Exception):  # the operator's error is the one to report
                self._graph.capture_end()
            raise
        self._graph.capture_end()
        return outputs

    def replay(self) -> None:
        self._graph.replay()


# an operator call as a capture records it: the operator, its arguments, and which of its tensor
# outputs (by position among them) it wrote into memory of its own
_Call = tuple[Any, tuple, dict, list[tuple[int, Tensor]]]


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[_Call] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        read = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        tensors = [t for t in pytree.tree_leaves(out) if isinstance(t, Tensor)]
        # a view of what the call read has no kernel: a replay leaves it to its base
        written = [
            (i, t) for i, t in enumerate(tensors) if not any(shares_memory(t, r) for r in read)
        ]
        self.calls.append((func, args, kwargs, written))
        return out


class RecordedCapture:
    """A CUDA graph's semantics on the CPU, for the test-only device (see the Note)."""

    def __init__(self) -> None:
        self._calls: list[_Call] = []

    def capture(self, fn: Callable[..., Any], inputs: Sequence[Any]) -> Any:
        recorder = _Recorder()
        with recorder:
            outputs = fn(*inputs)
        self._calls = recorder.calls
        for _, _, _, written in self._calls:  # a capture launches nothing
            for _, t in written:
                if t.is_floating_point():
                    t.fill_(float("nan"))
        return outputs

    def replay(self) -> None:
        for func, args, kwargs, written in self._calls:
            fresh = [t for t in pytree.tree_leaves(func(*args, **kwargs)) if isinstance(t, Tensor)]
            for position, old in written:
                old.copy_(fresh[position])


def _signature(values: Sequence[Any]) -> tuple:
    def key(v: Any) -> Any:
        if isinstance(v, Tensor):
            return (tuple(v.shape), v.stride(), v.dtype, v.device)
        return repr(v)

    return tuple(key(v) for v in values)


@dataclasses.dataclass
class _Captured:
    capture: Any
    inputs: list[Any]
    outputs: list[Any]


class CapturedSegment:
    """One segment of a device lane (Note [Device graph segments]), called with its inputs.

    Args:
        module: the segment's nodes as a GraphModule returning a tuple of what other nodes read.
        nodes: the names of the segment's nodes, in plan order.
        lane: the lane it runs on.
        constants: positions of inputs that are the same tensors on every call (weights): used
            as they are, never copied.
        make_capture: a new CudaCapture or RecordedCapture.
        prepare: called once with the first call's inputs, before anything runs (cuDNN weight
            flattening).
    """

    def __init__(
        self,
        module: torch.fx.GraphModule,
        nodes: Sequence[str],
        lane: str,
        constants: Sequence[int],
        make_capture: Callable[[], Any],
        prepare: Callable[[Sequence[Any]], None] | None = None,
    ) -> None:
        self.module = module
        self.nodes = list(nodes)
        self.lane = lane
        self.__name__ = "device_graph"
        self._constants = frozenset(constants)
        self._make_capture = make_capture
        self._prepare = prepare
        self._captures: dict[tuple, _Captured] = {}
        self._warmed: set[tuple] = set()  # signatures run once, not captured yet
        # the lane's thread calls the segment, one call at a time; status() reads from any thread
        self._lock = threading.Lock()
        self.failure: str | None = None
        self.replays = 0
        self.eager_calls = 0

    def status(self) -> dict[str, Any]:
        """The segment's nodes, lane, captured signatures, replays, eager calls and failure."""
        with self._lock:
            return {
                "nodes": list(self.nodes),
                "lane": self.lane,
                "captures": len(self._captures),
                "replays": self.replays,
                "eager_calls": self.eager_calls,
                "failure": self.failure,
            }

    def __call__(self, *args: Any) -> tuple:
        with self._lock:
            if self._prepare is not None:
                self._prepare(args)
                self._prepare = None
            key = _signature(args)
            captured = self._captures.get(key)
            if captured is None:
                captured = self._capture_on_second_call(key, args)
                if captured is None:
                    self.eager_calls += 1
                    return tuple(self.module(*args))
            else:
                with torch.no_grad():
                    for i, value in enumerate(args):
                        if isinstance(value, Tensor) and i not in self._constants:
                            captured.inputs[i].copy_(value)
            captured.capture.replay()
            self.replays += 1
            with torch.no_grad():  # the next replay writes the captured outputs again
                return tuple(o.clone() if isinstance(o, Tensor) else o for o in captured.outputs)

    def _capture_on_second_call(self, key: tuple, args: Sequence[Any]) -> _Captured | None:
        """The capture of ``key``'s signature made now, on its second call; None to run eagerly:
        on its first call, after a failed capture, and beyond MAX_CAPTURES signatures."""
        if self.failure is not None or len(self._captures) >= MAX_CAPTURES:
            return None
        if key not in self._warmed:
            if len(self._warmed) >= MAX_WARMED:  # a stream of lengths each seen once
                self._warmed.clear()
            self._warmed.add(key)
            return None
        self._warmed.discard(key)
        captured = self._capture(args)
        if captured is not None:
            self._captures[key] = captured
        return captured

    def _capture(self, args: Sequence[Any]) -> _Captured | None:
        with torch.no_grad():
            inputs = [
                v.clone() if isinstance(v, Tensor) and i not in self._constants else v
                for i, v in enumerate(args)
            ]
        capture = self._make_capture()
        try:
            outputs = list(capture.capture(self.module, inputs))
        except Exception as exc:  # noqa: BLE001 - any capture failure: run eagerly, say why
            self.failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            warnings.warn(
                f"torch_chrion: the device graph of {', '.join(self.nodes)} on {self.lane} could "
                f"not be captured ({self.failure}); its nodes run one by one",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        return _Captured(capture, inputs, outputs)


def _lane_order(gm: torch.fx.GraphModule, order: Sequence[str] | None) -> list[str]:
    if order is not None:
        return list(order)
    return [n.name for n in gm.graph.nodes if is_schedulable(n)]


def _capturable(node: torch.fx.Node) -> bool:
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return False
    return not is_python_call(node) and not node.target._schema.is_mutable


def _source(node: torch.fx.Node) -> torch.fx.Node:
    """The schedulable node behind a getitem."""
    while node.op == "call_function" and not is_schedulable(node) and node.all_input_nodes:
        node = node.all_input_nodes[0]
    return node


def find_segments(
    gm: torch.fx.GraphModule,
    placement: Mapping[str, str],
    order: Sequence[str] | None,
    device_lanes: Sequence[str],
) -> list[list[torch.fx.Node]]:
    """The segments of ``device_lanes`` (Note [Device graph segments]), each in plan order."""
    by_name = {n.name: n for n in gm.graph.nodes}
    names = _lane_order(gm, order)
    position = {name: i for i, name in enumerate(names)}
    found: list[list[torch.fx.Node]] = []
    for lane in device_lanes:
        runs: list[list[torch.fx.Node]] = []
        current: list[torch.fx.Node] = []
        for name in (n for n in names if placement.get(n) == lane):
            node = by_name[name]
            if not _capturable(node):
                runs.append(current)
                current = []
                continue
            if current:
                members = {m.name for m in current}
                head = position[current[0].name]
                for value in node.all_input_nodes:
                    source = _source(value)
                    if source.op in ("placeholder", "get_attr") or source.name in members:
                        continue
                    if placement.get(source.name) == lane and position[source.name] < head:
                        continue
                    runs.append(current)
                    current = []
                    break
            current.append(node)
        runs.append(current)
        found.extend(r for r in runs if len(r) >= 2 or any(_recurrent(n) for n in r))
    return found


def _recurrent(node: torch.fx.Node) -> bool:
    target = node.target
    return isinstance(target, torch._ops.OpOverload) and target._schema.name in RECURRENT_PARAMS


def _topological_units(
    nodes: list[torch.fx.Node], unit_of: Mapping[torch.fx.Node, int]
) -> list[list[torch.fx.Node]]:
    """The graph's nodes in groups (a segment's members with their getitems are one group, every
    other node one of its own), groups in a topological order that keeps the graph's order
    where it can."""
    groups: dict[Any, list[torch.fx.Node]] = {}
    first: dict[Any, int] = {}
    for i, node in enumerate(nodes):
        key = unit_of.get(node, node)
        groups.setdefault(key, []).append(node)
        first.setdefault(key, i)
    waits: dict[Any, set] = {key: set() for key in groups}
    for key, members in groups.items():
        for node in members:
            for value in node.all_input_nodes:
                other = unit_of.get(value, value)
                if other != key:
                    waits[key].add(other)
    readers: dict[Any, list] = {key: [] for key in groups}
    for key, keys in waits.items():
        for other in keys:
            readers[other].append(key)
    left = {key: len(keys) for key, keys in waits.items()}
    by_first = {first[key]: key for key in groups}  # a group's first node's index is its own
    ready = [first[key] for key in groups if not left[key]]
    heapq.heapify(ready)
    ordered: list[list[torch.fx.Node]] = []
    while ready:  # the ready group that comes first in the graph, each time
        key = by_first[heapq.heappop(ready)]
        ordered.append(groups[key])
        for reader in readers[key]:
            left[reader] -= 1
            if not left[reader]:
                heapq.heappush(ready, first[reader])
    if len(ordered) != len(groups):  # find_segments rules cycles out
        raise AssertionError("device graph segments form a cycle")
    return ordered


def group_segments(
    gm: torch.fx.GraphModule,
    placement: Mapping[str, str],
    order: Sequence[str] | None,
    capture_for: Mapping[str, Callable[[], Any]],
    prepare: Callable[[torch.fx.Node, list[Tensor]], None] | None = None,
) -> tuple[torch.fx.GraphModule, dict[str, str], list[str], list[CapturedSegment]]:
    """``gm`` with each segment of the lanes in ``capture_for`` (lane -> a new capture) as one
    node calling its CapturedSegment; the placement and order to match, and the segments.
    ``prepare(node, weights)`` is called with each recurrent node and its weight tensors on
    the segment's first call. ``gm`` is not changed."""
    segments = find_segments(gm, placement, order, list(capture_for))
    if not segments:
        return gm, dict(placement), _lane_order(gm, order), []
    unit_of: dict[torch.fx.Node, int] = {}
    for index, members in enumerate(segments):
        for node in members:
            unit_of[node] = index
            for user in node.users:
                if user.op == "call_function" and not is_schedulable(user):  # its getitems
                    unit_of[user] = index
    nodes = list(gm.graph.nodes)
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    made: list[CapturedSegment] = []
    renamed: dict[str, str] = {}
    for group in _topological_units(nodes, unit_of):
        index = unit_of.get(group[0])
        if index is None:
            env[group[0]] = graph.node_copy(group[0], env.__getitem__)
            continue
        members = set(group)
        inputs: list[torch.fx.Node] = []
        for node in group:
            for value in node.all_input_nodes:
                if value not in members and value not in inputs:
                    inputs.append(value)
        outputs = [
            n for n in group if any(u not in members for u in n.users) and not _returns_several(n)
        ]
        sub = torch.fx.Graph()
        sub_env: dict[torch.fx.Node, torch.fx.Node] = {}
        for i, value in enumerate(inputs):
            sub_env[value] = sub.placeholder(f"in_{i}")
            sub_env[value].meta = dict(value.meta)  # shapes, for prepare
        for node in group:
            sub_env[node] = sub.node_copy(node, sub_env.__getitem__)
        sub.output(tuple(sub_env[n] for n in outputs))
        module = torch.fx.GraphModule(gm, sub)
        lane = placement[segments[index][0].name]
        constants = [i for i, value in enumerate(inputs) if value.op == "get_attr"]
        segment = CapturedSegment(
            module,
            [n.name for n in segments[index]],
            lane,
            constants,
            capture_for[lane],
            _weights_preparer(module, prepare) if prepare is not None else None,
        )
        call = graph.create_node(
            "call_function",
            segment,
            tuple(env[value] for value in inputs),
            name=f"device_graph_{segments[index][0].name}",
        )
        renamed[segments[index][0].name] = call.name
        for k, node in enumerate(outputs):
            env[node] = graph.call_function(operator.getitem, (call, k))
        made.append(segment)
    grouped = torch.fx.GraphModule(gm, graph)
    members = {n.name for s in segments for n in s}
    new_placement = {k: v for k, v in placement.items() if k not in members}
    new_order: list[str] = []
    for name in _lane_order(gm, order):
        if name in renamed:
            new_placement[renamed[name]] = placement[name]
            new_order.append(renamed[name])
        elif name not in members:
            new_order.append(name)
    return grouped, new_placement, new_order, made


def _returns_several(node: torch.fx.Node) -> bool:
    return is_schedulable(node) and len(node.target._schema.returns) > 1  # type: ignore[union-attr]


def _weights_preparer(
    module: torch.fx.GraphModule, prepare: Callable[[torch.fx.Node, list[Tensor]], None]
) -> Callable[[Sequence[Any]], None]:
    """Calls ``prepare`` with each recurrent node of ``module`` whose weights are all inputs."""
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]

    def run(args: Sequence[Any]) -> None:
        value = dict(zip(placeholders, args, strict=True))
        for node in module.graph.nodes:
            if node.op != "call_function" or not _recurrent(node):
                continue
            params = node.args[RECURRENT_PARAMS[node.target._schema.name]]
            if all(p in value and isinstance(value[p], Tensor) for p in params):
                prepare(node, [value[p] for p in params])

    return run
