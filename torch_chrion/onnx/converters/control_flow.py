"""If, Loop and Scan: their subgraphs become GraphModules called from Python.

These are the operators whose execution depends on data (If's condition, Loop's trip count
and condition), so they run as Python modules, one node each in the fx graph; DESIGN.md
counts such nodes in the plan. A subgraph may read values of the enclosing graphs: those
become extra inputs of the node, listed after its ONNX inputs, and are passed on to the
subgraph's GraphModule after its own inputs.
"""

from __future__ import annotations

import onnx
import torch
from torch import Tensor, fx, nn

from ...errors import UnsupportedOperatorError
from .. import convert
from .._onnx2torch import (
    OnnxGraph,
    OnnxMapping,
    OnnxNode,
    OperationConverterResult,
    register_converter,
)
from ._dtypes import torch_dtype

_VERSIONS_AFTER_11 = [11, 13, 16, 19, 21, 23, 24, 25]


def _graph_attribute(node: OnnxNode, name: str) -> onnx.GraphProto:
    for attribute in node.proto.attribute:
        if attribute.name == name and attribute.HasField("g"):
            return attribute.g
    raise UnsupportedOperatorError(f"{node.operation_type} node has no graph attribute {name!r}")


class ControlFlowModule(nn.Module):
    """Base of the modules whose work depends on tensor values (If, Loop, Scan).

    Tracing through one (make_fx in real mode) would bake in the branch taken or the trip
    count of the example inputs, so a lowering pass must keep each as one leaf node, run as a
    Python callable (DESIGN.md: such nodes are counted and shown in the plan).
    """


class _Subgraph(nn.Module):
    """A converted subgraph and which of the node's outer-scope inputs it reads."""

    def __init__(self, graph: onnx.GraphProto, node_outer: list[str]) -> None:
        super().__init__()
        own_outer = convert.free_values(graph)
        self.module: fx.GraphModule = convert.convert_subgraph(graph, own_outer)
        self.outer_index = [node_outer.index(name) for name in own_outer]

    def forward(self, inputs: list[Tensor], outer: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return self.module(*inputs, *(outer[i] for i in self.outer_index))


def _single_or_tuple(values: list[Tensor] | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
    return values[0] if len(values) == 1 else tuple(values)


# --- If --------------------------------------------------------------------------------------


class OnnxIf(ControlFlowModule):
    """ONNX If: runs one branch on ``bool(cond)``; the branches read outer values only."""

    def __init__(self, then_branch: _Subgraph, else_branch: _Subgraph) -> None:
        super().__init__()
        self.then_branch = then_branch
        self.else_branch = else_branch

    def forward(self, cond: Tensor, *outer: Tensor) -> Tensor | tuple[Tensor, ...]:
        branch = self.then_branch if bool(cond.reshape(-1)[0]) else self.else_branch
        return _single_or_tuple(branch([], outer))


@register_converter("If", [1, *_VERSIONS_AFTER_11])
def convert_if(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    then_graph = _graph_attribute(node, "then_branch")
    else_graph = _graph_attribute(node, "else_branch")
    outer = list(dict.fromkeys(convert.free_values(then_graph) + convert.free_values(else_graph)))
    module = OnnxIf(_Subgraph(then_graph, outer), _Subgraph(else_graph, outer))
    return OperationConverterResult(
        torch_module=module,
        onnx_mapping=OnnxMapping(inputs=(node.input_values[0], *outer), outputs=node.output_values),
    )


def _device_of(values: list) -> torch.device:
    """The device of the first tensor among values (sequences and None skipped)."""
    for value in values:
        if isinstance(value, Tensor):
            return value.device
    return torch.device("cpu")


def _element_type(value: onnx.ValueInfoProto) -> tuple[torch.dtype, list[int]]:
    """dtype and shape of a body output, for the empty scan output of zero iterations
    (float32 and a scalar where the body does not say)."""
    tensor_type = value.type.tensor_type
    try:
        dtype = torch_dtype(tensor_type.elem_type)
    except UnsupportedOperatorError:
        dtype = torch.float32
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor_type.shape.dim]
    return dtype, dims


# --- Loop ------------------------------------------------------------------------------------


def _stack(slices: list[Tensor], axis: int = 0) -> Tensor:
    if not slices:  # zero iterations: an empty scan output (its element shape is unknown)
        return torch.empty(0)
    return torch.stack(slices, dim=axis)


class OnnxLoop(ControlFlowModule):
    """ONNX Loop: ``M`` (trip count) and ``cond`` are both optional; the body maps
    (iteration, cond, carried...) -> (cond, carried..., scan outputs...).

    The body's condition output ends the loop even when the node has no ``cond`` input (a
    missing one only means "start"). The spec's pseudo-code calls it ignored there, but
    onnxruntime and onnx's reference evaluator both stop on it, and they are the judges.
    """

    takes_blank_inputs = True  # a left-out M or cond arrives as None, in its position

    def __init__(
        self,
        body: _Subgraph,
        carried: int,
        has_trip_count: bool,
        has_cond: bool,
        empty_scans: list[tuple[torch.dtype, list[int]]],
    ) -> None:
        super().__init__()
        self.body = body
        self.carried = carried
        self.empty_scans = empty_scans  # dtype and element shape of each scan output
        self.has_trip_count = has_trip_count
        self.has_cond = has_cond

    def forward(self, *args: Tensor) -> Tensor | tuple[Tensor, ...]:
        trip_count, cond, *rest = args
        values = list(rest[: self.carried])
        outer = tuple(rest[self.carried :])
        limit = int(trip_count) if self.has_trip_count else None
        keep_going = bool(cond) if self.has_cond else True
        device = _device_of([trip_count, cond, *values])
        scans: list[list[Tensor]] = [[] for _ in self.empty_scans]
        iteration = 0
        while (limit is None or iteration < limit) and keep_going:
            results = self.body(
                [
                    torch.tensor(iteration, dtype=torch.int64, device=device),
                    torch.tensor(keep_going, dtype=torch.bool, device=device),
                    *values,
                ],
                outer,
            )
            keep_going = bool(results[0])
            values = list(results[1 : 1 + self.carried])
            for collected, value in zip(scans, results[1 + self.carried :], strict=True):
                collected.append(value)
            iteration += 1
        outputs = values + [
            torch.stack(collected)
            if collected
            else torch.empty((0, *shape), dtype=dtype, device=device)
            for collected, (dtype, shape) in zip(scans, self.empty_scans, strict=True)
        ]
        return _single_or_tuple(outputs)


@register_converter("Loop", [1, *_VERSIONS_AFTER_11])
def convert_loop(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    body = _graph_attribute(node, "body")
    outer = convert.free_values(body)
    inputs = list(node.input_values)
    inputs += [""] * (2 - min(len(inputs), 2))
    carried = len(inputs) - 2
    scan_outputs = len(body.output) - 1 - carried
    if scan_outputs < 0 or len(node.output_values) > carried + scan_outputs:
        raise UnsupportedOperatorError(
            f"Loop body has {len(body.output)} outputs for {carried} carried values"
        )
    empty_scans = [_element_type(value) for value in body.output[1 + carried :]]
    module = OnnxLoop(
        _Subgraph(body, outer), carried, bool(inputs[0]), bool(inputs[1]), empty_scans
    )
    return OperationConverterResult(
        torch_module=module,
        onnx_mapping=OnnxMapping(
            inputs=(*inputs, *outer),
            outputs=node.output_values,
        ),
    )


# --- Scan ------------------------------------------------------------------------------------


class OnnxScan(ControlFlowModule):
    """ONNX Scan-9+: states carried through the body, scan inputs sliced along their axes
    (backwards where the direction is 1), scan outputs stacked along theirs."""

    def __init__(
        self,
        body: _Subgraph,
        states: int,
        input_axes: list[int],
        input_reverse: list[bool],
        output_axes: list[int],
        output_reverse: list[bool],
    ) -> None:
        super().__init__()
        self.body = body
        self.states = states
        self.input_axes = input_axes
        self.input_reverse = input_reverse
        self.output_axes = output_axes
        self.output_reverse = output_reverse

    def run(self, states: list[Tensor], scanned: list[Tensor], outer: tuple) -> list[Tensor]:
        """One scan; also used per batch element by Scan-8."""
        axes = [a % x.dim() for a, x in zip(self.input_axes, scanned, strict=False)]
        length = scanned[0].shape[axes[0]] if scanned else 0
        outputs: list[list[Tensor]] = [[] for _ in self.output_axes]
        for step in range(length):
            slices = [
                x.select(axis, length - 1 - step if reverse else step)
                for x, axis, reverse in zip(scanned, axes, self.input_reverse, strict=False)
            ]
            results = self.body([*states, *slices], outer)
            states = list(results[: self.states])
            for collected, value in zip(outputs, results[self.states :], strict=False):
                collected.append(value)
        stacked = []
        for collected, axis, reverse in zip(
            outputs, self.output_axes, self.output_reverse, strict=False
        ):
            if reverse:
                collected = collected[::-1]
            rank = collected[0].dim() + 1 if collected else 1
            stacked.append(_stack(collected, axis % rank))
        return states + stacked

    def forward(self, *args: Tensor) -> Tensor | tuple[Tensor, ...]:
        inputs = len(self.input_axes)
        states = list(args[: self.states])
        scanned = list(args[self.states : self.states + inputs])
        outer = tuple(args[self.states + inputs :])
        return _single_or_tuple(self.run(states, scanned, outer))


class OnnxScan8(ControlFlowModule):
    """ONNX Scan-8: a batch axis 0 on every input and output, the sequence on axis 1, and an
    optional per-batch ``sequence_lens``; outputs past a sequence's length are zero."""

    takes_blank_inputs = True  # a left-out sequence_lens arrives as None

    def __init__(self, scan: OnnxScan) -> None:
        super().__init__()
        self.scan = scan

    def forward(self, sequence_lens: Tensor | None, *args: Tensor) -> Tensor | tuple[Tensor, ...]:
        scan = self.scan
        inputs = len(scan.input_axes)
        states = args[: scan.states]
        scanned = args[scan.states : scan.states + inputs]
        outer = tuple(args[scan.states + inputs :])
        batch = (states or scanned)[0].shape[0]
        full = scanned[0].shape[1] if scanned else 0
        per_batch = []
        for b in range(batch):
            length = int(sequence_lens[b]) if sequence_lens is not None else full
            outputs = scan.run([s[b] for s in states], [x[b, :length] for x in scanned], outer)
            padded = outputs[: scan.states]
            for value in outputs[scan.states :]:
                missing = full - value.shape[0]
                if missing:
                    zeros = value.new_zeros((missing, *value.shape[1:]))
                    value = torch.cat([value, zeros])
                padded.append(value)
            per_batch.append(padded)
        return _single_or_tuple([torch.stack(column) for column in zip(*per_batch, strict=False)])


def _scan_layout(node: OnnxNode, states: int, scan_inputs: int, scan_outputs: int) -> dict:
    attributes = node.attributes
    directions = attributes.get("scan_input_directions", attributes.get("directions"))
    return {
        "input_axes": list(attributes.get("scan_input_axes", [0] * scan_inputs)),
        "input_reverse": [bool(d) for d in (directions or [0] * scan_inputs)],
        "output_axes": list(attributes.get("scan_output_axes", [0] * scan_outputs)),
        "output_reverse": [
            bool(d) for d in attributes.get("scan_output_directions", [0] * scan_outputs)
        ],
    }


@register_converter("Scan", [9, *_VERSIONS_AFTER_11])
def convert_scan(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    body = _graph_attribute(node, "body")
    outer = convert.free_values(body)
    scan_inputs = int(node.attributes["num_scan_inputs"])
    states = len(node.input_values) - scan_inputs
    scan_outputs = len(body.output) - states
    layout = _scan_layout(node, states, scan_inputs, scan_outputs)
    module = OnnxScan(_Subgraph(body, outer), states, **layout)
    return OperationConverterResult(
        torch_module=module,
        onnx_mapping=OnnxMapping(inputs=(*node.input_values, *outer), outputs=node.output_values),
    )


@register_converter("Scan", [8])
def convert_scan8(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    body = _graph_attribute(node, "body")
    outer = convert.free_values(body)
    scan_inputs = int(node.attributes["num_scan_inputs"])
    states = len(node.input_values) - 1 - scan_inputs
    scan_outputs = len(body.output) - states
    layout = _scan_layout(node, states, scan_inputs, scan_outputs)
    layout["output_axes"] = [0] * scan_outputs  # Scan-8 stacks along the sequence axis
    layout["output_reverse"] = [False] * scan_outputs
    module = OnnxScan8(OnnxScan(_Subgraph(body, outer), states, **layout))
    return OperationConverterResult(
        torch_module=module,
        onnx_mapping=OnnxMapping(inputs=(*node.input_values, *outer), outputs=node.output_values),
    )
