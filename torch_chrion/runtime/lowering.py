"""Lowering a placed aten graph to the description the C++ Program is built from.

The description is plain Python data (lists, tuples, dicts, tensors), read once by
``Program::build`` (csrc/executor/program.cpp):

- ``lanes``: ``{"name", "device", "threads"}`` per lane, in lane-index order. The lanes of the
  placement come first; then, for each set of CPU lanes that nodes are placed wide on, its wide
  lane ("cpu:0+cpu:1"): a thread of its own with the intra-op threads of all of them.
- ``num_inputs`` / ``num_slots``: value slots; slots ``[0, num_inputs)`` are the graph's inputs.
- ``steps``: per step ``kind`` ("op" | "python" | "copy"), ``name``, ``lane``, ``rank`` (its
  position in the plan's order: each lane runs its steps by rank, see Note [Chrion plan order]
  in csrc/executor/program.cpp), ``first_output`` / ``num_outputs`` (the slots it writes),
  ``args``, and ``op``/``overload`` (op), ``fn`` (python) or ``target`` (copy). A wide node's
  step runs on its wide lane and lists the lanes it holds in ``hold`` (Note [Chrion wide steps]
  in csrc/executor/program.cpp).
  ``chrion::python_call`` nodes (ONNX If / Loop / Scan) are "op" steps, called through the
  dispatcher, whose kernel runs Python under the GIL: they are listed in ``python_nodes`` with
  the Python steps.
- ``outputs``: ``(slot, element)`` per flat graph output that is a value.
- ``fuse_elementwise``: whether Program::build fuses chains of small elementwise CPU steps.

An argument is ``("v", slot, element)`` (element -1: the whole value; else one element of a
tuple or list value, which is how ``operator.getitem`` disappears), ``("c", constant)``,
``("l", [items])`` (a list built per call, e.g. ``Tensor[]`` holding values), or ``("d",)`` (the
schema's default). Op arguments follow the operator's schema one to one; constants become
IValues once, by the schema's types, in C++.

Cross-device edges get explicit copy steps (see Note [Chrion copy steps] in
csrc/executor/executor.cpp); edges between CPU lanes need none. A copy to the host of a device
step's value is issued by the producer's lane right after the producer (the host consumers
become ready when the data lands); any other copy is issued by the lane of its earliest reader
in the plan, right before that reader. Weights (``get_attr``) are
moved once to each physical device whose lanes read them, so a weight read only on CPU lanes is
never on a GPU. Device constants (``device=cpu`` recorded by tracing on the CPU) are rewritten to
the lane's device, which keeps factory ops such as ``new_zeros`` on the lane that runs them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree

from ..errors import PlanError, UnsupportedOperatorError
from ..graph.nodes import fetch_attr, is_schedulable, node_callable
from ..ops.python_call import is_python_call, lookup
from .device_graphs import RECURRENT_PARAMS, CapturedSegment
from .lanes import LaneSpec, lane_specs, parse_lane


@dataclass
class Lowered:
    """What PlacedGraph needs besides the C++ executor."""

    description: dict[str, Any]
    lanes: list[LaneSpec]
    python_nodes: list[str]
    output_spec: pytree.TreeSpec
    # per flat output: ("out", i) -> the executor's i-th output, or ("const", value)
    output_leaves: list[tuple[str, Any]] = field(default_factory=list)
    num_inputs: int = 0
    # the callables of chrion::python_call steps: the program keeps them alive (the registry
    # holds them weakly), even if the graph it was lowered from is freed
    python_calls: list[Any] = field(default_factory=list)


def _thawed(value: Any) -> Any:
    """``value`` with fx's immutable lists and dicts (how a graph stores its output node's
    argument) as the plain ones the graph's own code returns."""
    if isinstance(value, list):
        return [_thawed(v) for v in value]
    if isinstance(value, dict):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, tuple) and type(value) is tuple:
        return tuple(_thawed(v) for v in value)
    if isinstance(value, tuple):  # a named tuple
        return type(value)(*(_thawed(v) for v in value))
    return value


def _check_placement(
    nodes: list[torch.fx.Node], placement: Mapping[str, str]
) -> list[torch.fx.Node]:
    by_name = {n.name: n for n in nodes}
    schedulable = [n for n in nodes if is_schedulable(n)]
    for name in placement:
        node = by_name.get(name)
        if node is None:
            raise PlanError(f"placement names node {name!r}, which is not in the graph")
        if not is_schedulable(node) and node.target is not operator.getitem:
            raise PlanError(
                f"placement names node {name!r}, a {node.op} node: only operator calls are placed"
            )
    missing = [n.name for n in schedulable if n.name not in placement]
    if missing:
        raise PlanError(
            f"placement has no lane for {len(missing)} node(s): {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    return schedulable


def _check_wide(
    wide: Mapping[str, Sequence[str]], placement: Mapping[str, str]
) -> dict[str, list[str]]:
    """Wide nodes (Note [Chrion wide placement] in schedule/task_graph.py): placed, holding two
    or more distinct CPU lanes, their placed lane first."""
    for name, lanes in wide.items():
        if name not in placement:
            raise PlanError(f"wide node {name!r} is not placed")
        lanes = list(lanes)
        if len(lanes) < 2 or len(set(lanes)) != len(lanes) or lanes[0] != placement[name]:
            raise PlanError(
                f"wide node {name!r} must hold two or more distinct lanes, its own "
                f"({placement[name]!r}) first; got {lanes}"
            )
        not_cpu = [lane for lane in lanes if parse_lane(lane).type != "cpu" or "fake" in lane]
        if not_cpu:
            raise PlanError(f"wide node {name!r} holds {not_cpu[0]!r}, which is not a CPU lane")
    return {name: list(lanes) for name, lanes in wide.items()}


def _ranks(schedulable: list[torch.fx.Node], order: Sequence[str] | None) -> dict[str, int]:
    if order is None:
        return {n.name: i for i, n in enumerate(schedulable)}
    names = {n.name for n in schedulable}
    ranks: dict[str, int] = {}
    for i, name in enumerate(order):
        if name not in names:
            raise PlanError(f"order names {name!r}, which is not a schedulable node of the graph")
        if name in ranks:
            raise PlanError(f"order names {name!r} twice")
        ranks[name] = i
    missing = names - ranks.keys()
    if missing:
        raise PlanError(f"order misses {len(missing)} node(s): {', '.join(sorted(missing)[:5])}")
    return ranks


class _Lowering:
    """One pass over the graph in topological order, building steps as it goes."""

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        placement: Mapping[str, str],
        order: Sequence[str] | None,
        cpu_threads: int | None,
        wide: Mapping[str, Sequence[str]] | None = None,
        fuse_elementwise: bool = True,
    ) -> None:
        self.gm = gm
        self.fuse_elementwise = fuse_elementwise
        self.nodes = list(gm.graph.nodes)
        schedulable = _check_placement(self.nodes, placement)
        self.rank = _ranks(schedulable, order)
        self.wide = _check_wide(wide or {}, placement)
        held = [lane for lanes in self.wide.values() for lane in lanes]
        self.lanes = lane_specs([*(placement[n.name] for n in schedulable), *held], cpu_threads)
        self.lane_index = {lane.name: i for i, lane in enumerate(self.lanes)}
        for lanes in dict.fromkeys(tuple(lanes) for lanes in self.wide.values()):
            members = [self.lanes[self.lane_index[lane]] for lane in lanes]
            name = "+".join(lanes)
            self.lane_index[name] = len(self.lanes)
            self.lanes.append(LaneSpec(name, members[0].device, sum(m.threads for m in members)))
        self.placement = placement
        self.mixed = any(lane.physical != "cpu" for lane in self.lanes)
        self.placeholders = [n for n in self.nodes if n.op == "placeholder"]
        self.num_slots = len(self.placeholders)
        self.refs: dict[torch.fx.Node, tuple] = {
            n: ("v", i, -1) for i, n in enumerate(self.placeholders)
        }
        self.home: dict[int, str | None] = {i: None for i in range(self.num_slots)}
        self.producer_lane: dict[int, int] = {}
        self.producer_rank: dict[int, int] = {}
        self.copies: dict[tuple[int, int, str], int] = {}
        self.weights: dict[tuple[str, str], Any] = {}
        self.steps: list[dict[str, Any]] = []
        self.python_nodes: list[str] = []
        self.python_calls: list[Any] = []

    # values -----------------------------------------------------------------------------
    def _new_slots(self, count: int, home: str, lane: int, rank: int) -> int:
        first = self.num_slots
        self.num_slots += count
        for s in range(first, first + count):
            self.home[s] = home
            self.producer_lane[s] = lane
            self.producer_rank[s] = rank
        return first

    def _weight(self, node: torch.fx.Node, lane: int) -> Any:
        key = (node.target, self.lanes[lane].physical)
        if key not in self.weights:
            value = fetch_attr(self.gm, node.target)
            if isinstance(value, torch.Tensor):
                value = value.detach().to(self.lanes[lane].device)
            self.weights[key] = value
        return self.weights[key]

    def _value(self, node: torch.fx.Node, lane: int, rank: int) -> tuple:
        """A reference to ``node``'s value readable on ``lane``: a copy step when it lives on
        another physical device (inputs of a mixed program always get one: where the caller's
        tensors live is only known per call, and the copy passes them through when they
        already are on the lane's device)."""
        ref = self.refs[node]
        if ref[0] == "multi":
            raise UnsupportedOperatorError(
                f"node {node.name!r} returns several values and is used whole; "
                "use operator.getitem to pick one",
                ops=[str(node.target)],
            )
        target = self.lanes[lane].physical
        if not self.mixed or self.home[ref[1]] == target:
            return ref
        return self._copy_to(node.name, ref, target, lane, rank)

    def _copy_to(self, name: str, ref: tuple, target: str, lane: int, rank: int) -> tuple:
        """A copy step of ``ref`` to physical device ``target`` run by ``lane`` (one per value
        and device, shared by every reader there)."""
        key = (ref[1], ref[2], target)
        if key not in self.copies:
            out = self._new_slots(1, target, lane, rank)
            self.steps.append(
                {
                    "kind": "copy",
                    "name": f"copy:{name}->{target}",
                    "lane": lane,
                    "rank": rank,
                    "target": target,
                    "args": [ref],
                    "first_output": out,
                    "num_outputs": 1,
                }
            )
            self.copies[key] = out
        return ("v", self.copies[key], -1)

    def _arg(self, value: Any, lane: int, rank: int) -> tuple:
        if isinstance(value, torch.fx.Node):
            if value.op == "get_attr":
                return ("c", self._weight(value, lane))
            return self._value(value, lane, rank)
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.fx.Node) for v in value):
            return ("l", [self._arg(v, lane, rank) for v in value])
        if isinstance(value, torch.device):
            return ("c", self.lanes[lane].device)
        return ("c", value)

    # steps ------------------------------------------------------------------------------
    def _op_step(self, node: torch.fx.Node, lane: int, rank: int) -> dict[str, Any]:
        schema = node.target._schema
        args: list[tuple] = []
        for i, argument in enumerate(schema.arguments):
            if i < len(node.args) and not argument.kwarg_only:
                args.append(self._arg(node.args[i], lane, rank))
            elif argument.name in node.kwargs:
                args.append(self._arg(node.kwargs[argument.name], lane, rank))
            else:
                args.append(("d",))
        if schema.name in RECURRENT_PARAMS and self.lanes[lane].device.type == "cuda":
            _flatten_for_cudnn(node, args[RECURRENT_PARAMS[schema.name]])
        return {
            "kind": "op",
            "op": schema.name,
            "overload": schema.overload_name,
            "args": args,
            "num_outputs": len(schema.returns),
        }

    def _python_step(self, node: torch.fx.Node, lane: int, rank: int) -> dict[str, Any]:
        device = self.lanes[lane].device
        leaves, spec = pytree.tree_flatten((node.args, node.kwargs))
        template: list[Any] = []
        positions: list[int] = []
        refs: list[tuple] = []
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, torch.fx.Node) and leaf.op != "get_attr":
                positions.append(i)
                refs.append(self._value(leaf, lane, rank))
                template.append(None)
            elif isinstance(leaf, torch.fx.Node):
                template.append(self._weight(leaf, lane))
            elif isinstance(leaf, torch.device):
                template.append(device)
            else:
                template.append(leaf)
        fn = node_callable(self.gm, node)
        if not isinstance(fn, CapturedSegment):  # replays a device graph: not the model's Python
            self.python_nodes.append(node.name)
        return {
            "kind": "python",
            "op": getattr(node.target, "__name__", str(node.target)),
            "fn": _Rebuild(fn, spec, template, positions),
            "args": refs,
            "num_outputs": 1,
        }

    def _getitem(self, node: torch.fx.Node) -> tuple:
        source, index = node.args
        ref = self.refs[source]
        if ref[0] == "multi":
            return ("v", ref[1] + index, -1)
        if ref[2] == -1:
            return ("v", ref[1], index)
        raise UnsupportedOperatorError(
            f"node {node.name!r}: getitem of getitem ({source.name!r}) is not supported",
            ops=["operator.getitem"],
        )

    def run(self) -> Lowered:
        for node in self.nodes:
            if node.op == "call_function" and node.target is operator.getitem:
                self.refs[node] = self._getitem(node)
            elif is_schedulable(node):
                held = self.wide.get(node.name)
                lane = self.lane_index["+".join(held) if held else self.placement[node.name]]
                # copies it reads run just before it (3r), copies of its value just after (3r+2)
                rank = 3 * self.rank[node.name] + 1
                if isinstance(node.target, torch._ops.OpOverload) and node.op == "call_function":
                    step = self._op_step(node, lane, rank - 1)
                    if is_python_call(node):  # one dispatcher call, but Python under the GIL
                        self.python_nodes.append(node.name)
                        self.python_calls.append(lookup(node.args[0]))
                else:
                    step = self._python_step(node, lane, rank - 1)
                first = self._new_slots(step["num_outputs"], self.lanes[lane].physical, lane, rank)
                step.update(name=node.name, lane=lane, rank=rank, first_output=first)
                if held:
                    step["hold"] = [self.lane_index[h] for h in held]
                self.steps.append(step)
                many = step["kind"] == "op" and step["num_outputs"] > 1
                self.refs[node] = (
                    ("multi", first, step["num_outputs"]) if many else ("v", first, -1)
                )
        return self._outputs()

    def _outputs(self) -> Lowered:
        output = next(n for n in reversed(self.nodes) if n.op == "output")
        leaves, spec = pytree.tree_flatten(_thawed(output.args[0]))
        outputs: list[tuple[int, int]] = []
        kinds: list[tuple[str, Any]] = []
        last_rank = 3 * len(self.rank) + 3
        cpu_lane = next((i for i, lane in enumerate(self.lanes) if lane.physical == "cpu"), None)
        for leaf in leaves:
            if not isinstance(leaf, torch.fx.Node):
                kinds.append(("const", leaf))
                continue
            if leaf.op == "get_attr":
                kinds.append(("const", fetch_attr(self.gm, leaf.target)))
                continue
            ref = self.refs[leaf]
            if ref[0] != "multi" and self.mixed and leaf.op != "placeholder":
                ref = self._output_copy(leaf, ref, cpu_lane, last_rank)
            elif ref[0] == "multi":
                ref = self._value(leaf, 0, last_rank)  # raises: used whole
            kinds.append(("out", len(outputs)))
            outputs.append((ref[1], ref[2]))
        self._place_copies()
        description = {
            "lanes": [
                {
                    "name": lane.name,
                    "device": str(lane.device),
                    "threads": lane.threads,
                    "fake": lane.fake,
                }
                for lane in self.lanes
            ],
            "num_inputs": len(self.placeholders),
            "num_slots": self.num_slots,
            "steps": self.steps,
            "outputs": outputs,
            "fuse_elementwise": self.fuse_elementwise,
        }
        return Lowered(
            description,
            self.lanes,
            self.python_nodes,
            spec,
            kinds,
            len(self.placeholders),
            self.python_calls,
        )

    def _place_copies(self) -> None:
        """Give each copy step its lane and rank (see the module docstring): a copy is made
        where its first reader was lowered, but the plan may run another reader first, and a
        copy to the host belongs right after its device producer."""
        readers: dict[int, list[dict[str, Any]]] = {}

        def visit(arg: tuple, step: dict[str, Any]) -> None:
            if arg[0] == "v":
                readers.setdefault(arg[1], []).append(step)
            elif arg[0] == "l":
                for item in arg[1]:
                    visit(item, step)

        for step in self.steps:
            for arg in step["args"]:
                visit(arg, step)
        for step in self.steps:
            if step["kind"] != "copy":
                continue
            source = step["args"][0][1]
            lane = self.producer_lane.get(source)
            if step["target"] == "cpu" and lane is not None and self.home[source] != "cpu":
                step["lane"], step["rank"] = lane, self.producer_rank[source] + 1
                continue
            first = min(
                readers.get(step["first_output"], []), key=lambda r: r["rank"], default=None
            )
            if first is not None:
                step["lane"], step["rank"] = first["lane"], first["rank"] - 1

    def _output_copy(
        self, leaf: torch.fx.Node, ref: tuple, cpu_lane: int | None, rank: int
    ) -> tuple:
        """Outputs come back on the device the graph was traced on (``meta["val"]``). A copy to
        the CPU runs on a CPU lane, or on the producer's lane in a plan without one."""
        val = leaf.meta.get("val")
        if not isinstance(val, torch.Tensor):
            return ref
        want = "cpu" if val.device.type == "cpu" else str(val.device)
        if self.home[ref[1]] == want:
            return ref
        lanes = [i for i, lane in enumerate(self.lanes) if lane.physical == want]
        lane = lanes[0] if lanes else (cpu_lane if want == "cpu" else None)
        if lane is None:
            lane = self.producer_lane[ref[1]]
        return self._copy_to(leaf.name, ref, want, lane, rank)


def _flatten_for_cudnn(node: torch.fx.Node, params_arg: tuple) -> None:
    if params_arg[0] != "l" or any(item[0] != "c" for item in params_arg[1]):
        return
    flatten_for_cudnn(node, [item[1] for item in params_arg[1]])


def flatten_for_cudnn(node: torch.fx.Node, weights: list[torch.Tensor]) -> None:
    """Put a recurrent node's CUDA weights into one cuDNN-layout buffer, as
    nn.RNNBase.flatten_parameters does: otherwise cuDNN compacts them on every call (time and
    GPU memory). Only weights (constants) are touched; the values do not change."""
    if not weights or not all(w.is_cuda for w in weights):
        return
    kind = node.target._schema.name.split("::")[1]
    offset = 1 if kind == "lstm" else 0  # lstm has c0 before params
    num_layers, bidirectional, batch_first = node.args[4 + offset : 7 + offset]
    mode = {"lstm": "LSTM", "gru": "GRU"}.get(kind)
    if mode is None:
        nonlinearity = node.args[8] if len(node.args) > 8 else "tanh"
        mode = "RNN_" + str(nonlinearity).upper()
    x, h0 = node.args[0].meta.get("val"), node.args[1].meta.get("val")
    if not isinstance(x, torch.Tensor) or not isinstance(h0, torch.Tensor):
        return
    hidden = h0.shape[-1]
    per_layer = len(weights) // (num_layers * (2 if bidirectional else 1))
    w_hh = weights[1]
    proj = w_hh.shape[1] if w_hh.shape[1] != hidden else 0
    try:
        from torch.backends.cudnn import rnn as cudnn_rnn

        with torch.no_grad():
            torch._cudnn_rnn_flatten_weight(
                weights,
                per_layer,
                x.shape[-1],
                cudnn_rnn.get_cudnn_mode(mode),
                hidden,
                proj,
                num_layers,
                batch_first,
                bidirectional,
            )
    except (RuntimeError, ValueError):  # no cuDNN: the kernel falls back, only slower
        return


class _Rebuild:
    """Calls a node's Python target with its values put back into its args and kwargs."""

    def __init__(
        self, fn: Callable[..., Any], spec: pytree.TreeSpec, template: list, positions: list[int]
    ) -> None:
        self.fn, self.spec, self.template, self.positions = fn, spec, template, positions

    def __call__(self, *values: Any) -> Any:
        leaves = list(self.template)
        for position, value in zip(self.positions, values, strict=True):
            leaves[position] = value
        args, kwargs = pytree.tree_unflatten(leaves, self.spec)
        return self.fn(*args, **kwargs)


def lower(
    gm: torch.fx.GraphModule,
    placement: Mapping[str, str],
    order: Sequence[str] | None = None,
    cpu_threads: int | None = None,
    wide: Mapping[str, Sequence[str]] | None = None,
    fuse_elementwise: bool = True,
) -> Lowered:
    """Describe ``gm`` placed by ``placement`` for ``Program::build``.

    Args:
        gm: the aten graph (see the graph contract in torch_chrion.graph).
        placement: lane of every schedulable node, by node name.
        order: global priority order of the schedulable nodes (default: graph order).
        cpu_threads: intra-op threads of each CPU lane (default: shared out evenly).
        wide: the CPU lanes each wide node holds, its placed lane first (a plan's ``wide``).
        fuse_elementwise: run chains of small elementwise CPU steps as one step (Note [Chrion
            elementwise chains] in csrc/executor/elementwise.h); False runs every node alone.

    Raises:
        PlanError: a placement or order naming unknown nodes, or missing some.
        OptionError: an unknown lane string, or a CUDA lane without CUDA.
        UnsupportedOperatorError: a graph shape the executor cannot express.
    """
    return _Lowering(gm, placement, order, cpu_threads, wide, fuse_elementwise).run()
