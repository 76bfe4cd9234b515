"""Shape-taking operators whose shape arguments are read at conversion time.

onnx2torch's modules for these read shapes from tensors while running (``torch.any(shape ==
0)``, ``.tolist()``), which stops ``make_fx`` and ``torch.export``. Ours take the shape
argument as a Python list when it is an initializer or a Constant (see ``_constants``), and
read the tensor at run time only when it is computed by the graph. They replace onnx2torch's
converters for the versions it has and add the newer ones (Reshape-19..25, Split-18,
Pad-18..25, Squeeze/Unsqueeze-21..25, ConstantOfShape-20..25).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import UnsupportedOperatorError
from .._onnx2torch import (
    OnnxGraph,
    OnnxMapping,
    OnnxNode,
    OperationConverterResult,
    register_converter,
)
from ._constants import constant_input, constant_ints, is_given


def _ints(value: Tensor | None) -> list[int] | None:
    return None if value is None else [int(v) for v in value.reshape(-1).tolist()]


def _result(module: nn.Module, node: OnnxNode, inputs: list[str]) -> OperationConverterResult:
    return OperationConverterResult(
        torch_module=module,
        onnx_mapping=OnnxMapping(inputs=tuple(inputs), outputs=node.output_values),
    )


def _input_or_blank(node: OnnxNode, index: int, static: object) -> str:
    """The input's name when it must be fed at run time, blank when read already."""
    if static is not None or not is_given(node, index):
        return ""
    return node.input_values[index]


# --- Reshape ---------------------------------------------------------------------------------


class OnnxReshape(nn.Module):
    """ONNX Reshape: 0 copies the input's dimension unless ``allowzero``; -1 is inferred."""

    def __init__(self, shape: list[int] | None, allowzero: bool) -> None:
        super().__init__()
        self.shape = shape
        self.allowzero = allowzero

    def forward(self, data: Tensor, shape: Tensor | None = None) -> Tensor:
        target = self.shape if self.shape is not None else _ints(shape)
        if not self.allowzero:
            target = [data.shape[i] if size == 0 else size for i, size in enumerate(target)]
        return torch.reshape(data, target)


@register_converter("Reshape", [5, 13, 14, 19, 21, 23, 24, 25], replace=True)
def convert_reshape(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    shape = constant_ints(node, graph, 1)
    module = OnnxReshape(shape, bool(node.attributes.get("allowzero", 0)))
    return _result(module, node, [node.input_values[0], _input_or_blank(node, 1, shape)])


# --- Squeeze / Unsqueeze ---------------------------------------------------------------------


class OnnxSqueeze(nn.Module):
    """ONNX Squeeze: the given axes (all size-1 axes when none are given)."""

    def __init__(self, axes: list[int] | None, axes_fed: bool) -> None:
        super().__init__()
        self.axes = axes
        self.axes_fed = axes_fed

    def forward(self, data: Tensor, axes: Tensor | None = None) -> Tensor:
        chosen = _ints(axes) if self.axes_fed else self.axes
        if not chosen:
            return torch.squeeze(data)
        return torch.squeeze(data, tuple(a % data.dim() for a in chosen))


@register_converter("Squeeze", [1, 11], replace=True)
def convert_squeeze_attribute(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    module = OnnxSqueeze(node.attributes.get("axes"), axes_fed=False)
    return _result(module, node, [node.input_values[0]])


@register_converter("Squeeze", [13, 21, 23, 24, 25], replace=True)
def convert_squeeze(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    axes = constant_ints(node, graph, 1)
    fed = axes is None and is_given(node, 1)
    return _result(
        OnnxSqueeze(axes, fed), node, [node.input_values[0], _input_or_blank(node, 1, axes)]
    )


class OnnxUnsqueeze(nn.Module):
    """ONNX Unsqueeze: axes index the output, whose rank is the input's plus len(axes)."""

    def __init__(self, axes: list[int] | None) -> None:
        super().__init__()
        self.axes = axes

    def forward(self, data: Tensor, axes: Tensor | None = None) -> Tensor:
        chosen = self.axes if self.axes is not None else _ints(axes)
        rank = data.dim() + len(chosen)
        for axis in sorted(a % rank for a in chosen):
            data = torch.unsqueeze(data, axis)
        return data


@register_converter("Unsqueeze", [1, 11], replace=True)
def convert_unsqueeze_attribute(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return _result(OnnxUnsqueeze(list(node.attributes["axes"])), node, [node.input_values[0]])


@register_converter("Unsqueeze", [13, 21, 23, 24, 25], replace=True)
def convert_unsqueeze(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    axes = constant_ints(node, graph, 1)
    return _result(
        OnnxUnsqueeze(axes), node, [node.input_values[0], _input_or_blank(node, 1, axes)]
    )


# --- Split -----------------------------------------------------------------------------------


class OnnxSplit(nn.Module):
    """ONNX Split into ``outputs`` parts: by sizes, or equal parts (the last one smaller when
    the axis does not divide, as Split-18's ``num_outputs`` allows)."""

    def __init__(self, axis: int, sizes: list[int] | None, outputs: int) -> None:
        super().__init__()
        self.axis = axis
        self.sizes = sizes
        self.outputs = outputs

    def forward(self, data: Tensor, split: Tensor | None = None) -> Tensor | tuple[Tensor, ...]:
        sizes = self.sizes if self.sizes is not None else _ints(split)
        if sizes is None:
            length = data.shape[self.axis]
            chunk = -(-length // self.outputs)
            sizes = [min(chunk, max(length - chunk * i, 0)) for i in range(self.outputs)]
        parts = torch.split(data, sizes, dim=self.axis)
        return parts[0] if self.outputs == 1 else tuple(parts)


@register_converter("Split", [2, 11], replace=True)
def convert_split_attribute(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    split = node.attributes.get("split")
    module = OnnxSplit(node.attributes.get("axis", 0), split, len(node.output_values))
    return _result(module, node, [node.input_values[0]])


@register_converter("Split", [13, 18], replace=True)
def convert_split(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    sizes = constant_ints(node, graph, 1)
    outputs = len(node.output_values)
    if "num_outputs" in node.attributes and node.attributes["num_outputs"] != outputs:
        raise UnsupportedOperatorError(
            f"num_outputs={node.attributes['num_outputs']} but the node has {outputs} outputs"
        )
    module = OnnxSplit(node.attributes.get("axis", 0), sizes, outputs)
    return _result(module, node, [node.input_values[0], _input_or_blank(node, 1, sizes)])


# --- Pad -------------------------------------------------------------------------------------


def _pad_indices(size: int, before: int, after: int, mode: str) -> list[int]:
    """Source index of each output position along one axis (before/after >= 0)."""
    positions = range(-before, size + after)
    if mode == "edge":
        return [min(max(i, 0), size - 1) for i in positions]
    if mode == "wrap":
        return [i % size for i in positions]
    period = 2 * (size - 1)  # reflect: mirror without repeating the edge
    if period == 0:
        return [0 for _ in positions]
    folded = [i % period for i in positions]
    return [period - i if i >= size else i for i in folded]


class OnnxPad(nn.Module):
    """ONNX Pad in constant, reflect, edge or wrap mode over any axes; negative pads crop."""

    def __init__(
        self, mode: str, pads: list[int] | None, axes: list[int] | None, value: float | None
    ) -> None:
        super().__init__()
        self.mode = mode
        self.pads = pads
        self.axes = axes
        self.value = value

    def forward(
        self,
        data: Tensor,
        pads: Tensor | None = None,
        constant_value: Tensor | None = None,
        axes: Tensor | None = None,
    ) -> Tensor:
        amounts = self.pads if self.pads is not None else _ints(pads)
        chosen = self.axes if self.axes is not None else _ints(axes)
        rank = data.dim()
        chosen = list(range(rank)) if chosen is None else [a % rank for a in chosen]
        before = dict(zip(chosen, amounts[: len(chosen)], strict=False))
        after = dict(zip(chosen, amounts[len(chosen) :], strict=False))
        if self.mode == "constant":
            value = self.value
            if value is None:
                value = constant_value.item() if constant_value is not None else 0
            flat: list[int] = []
            for axis in reversed(range(rank)):
                flat += [before.get(axis, 0), after.get(axis, 0)]
            return F.pad(data, flat, mode="constant", value=value)
        for axis in chosen:
            b, e = before[axis], after[axis]
            if b < 0 or e < 0:  # crop first, then pad what is left
                data = data.narrow(axis, max(-b, 0), data.shape[axis] - max(-b, 0) - max(-e, 0))
                b, e = max(b, 0), max(e, 0)
            if b or e:
                index = _pad_indices(data.shape[axis], b, e, self.mode)
                data = data.index_select(axis, torch.tensor(index, device=data.device))
        return data


_PAD_MODES = ("constant", "reflect", "edge", "wrap")


@register_converter("Pad", [2], replace=True)
def convert_pad_attribute(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    mode = node.attributes.get("mode", "constant")
    if mode not in _PAD_MODES[:3]:
        raise UnsupportedOperatorError(f"Pad mode {mode!r}")
    module = OnnxPad(mode, list(node.attributes["pads"]), None, node.attributes.get("value", 0.0))
    return _result(module, node, [node.input_values[0]])


@register_converter("Pad", [11, 13, 18, 19, 21, 23, 24, 25], replace=True)
def convert_pad(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    mode = node.attributes.get("mode", "constant")
    if mode not in _PAD_MODES:
        raise UnsupportedOperatorError(f"Pad mode {mode!r} (expected one of {_PAD_MODES})")
    pads = constant_ints(node, graph, 1)
    value_tensor = constant_input(node, graph, 2)
    value = None if value_tensor is None else value_tensor.reshape(-1)[0].item()
    if value is None and not is_given(node, 2):
        value = 0
    axes = constant_ints(node, graph, 3)
    inputs = [
        node.input_values[0],
        _input_or_blank(node, 1, pads),
        _input_or_blank(node, 2, value),
        _input_or_blank(node, 3, axes),
    ]
    return _result(OnnxPad(mode, pads, axes, value), node, inputs)


# --- Slice -----------------------------------------------------------------------------------


def _slice_axis(data: Tensor, axis: int, start: int, end: int, step: int) -> Tensor:
    """One axis of ONNX Slice, with the spec's clamping of start and end."""
    size = data.shape[axis]
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), size), min(max(end, 0), size)
        index = [slice(None)] * axis + [slice(start, end, step)]
        return data[tuple(index)]
    start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
    positions = list(range(start, end, step))
    return data.index_select(axis, torch.tensor(positions, dtype=torch.long, device=data.device))


class OnnxSlice(nn.Module):
    """ONNX Slice-10+: starts, ends, axes, steps (each static or fed at run time)."""

    def __init__(self, static: list[list[int] | None]) -> None:
        super().__init__()
        self.static = static  # starts, ends, axes, steps

    def forward(
        self,
        data: Tensor,
        starts: Tensor | None = None,
        ends: Tensor | None = None,
        axes: Tensor | None = None,
        steps: Tensor | None = None,
    ) -> Tensor:
        fed = (starts, ends, axes, steps)
        values = [s if s is not None else _ints(f) for s, f in zip(self.static, fed, strict=False)]
        begin, end, chosen, step = values
        chosen = list(range(len(begin))) if chosen is None else chosen
        step = [1] * len(begin) if step is None else step
        for axis, b, e, s in zip(chosen, begin, end, step, strict=False):
            data = _slice_axis(data, axis % data.dim(), b, e, s)
        return data


@register_converter("Slice", [10, 11, 13], replace=True)
def convert_slice(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    static = [constant_ints(node, graph, i) for i in range(1, 5)]
    inputs = [node.input_values[0]] + [_input_or_blank(node, i + 1, static[i]) for i in range(4)]
    return _result(OnnxSlice(static), node, inputs)


# --- Expand / Tile / ConstantOfShape ---------------------------------------------------------


class OnnxExpand(nn.Module):
    """ONNX Expand: broadcast of the input's shape and the given shape, both ways."""

    def __init__(self, shape: list[int] | None) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, data: Tensor, shape: Tensor | None = None) -> Tensor:
        target = self.shape if self.shape is not None else _ints(shape)
        return data.expand(torch.broadcast_shapes(data.shape, tuple(target)))


@register_converter("Expand", [8, 13], replace=True)
def convert_expand(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    shape = constant_ints(node, graph, 1)
    return _result(OnnxExpand(shape), node, [node.input_values[0], _input_or_blank(node, 1, shape)])


class OnnxTile(nn.Module):
    """ONNX Tile: repeat each axis."""

    def __init__(self, repeats: list[int] | None) -> None:
        super().__init__()
        self.repeats = repeats

    def forward(self, data: Tensor, repeats: Tensor | None = None) -> Tensor:
        return data.repeat(self.repeats if self.repeats is not None else _ints(repeats))


@register_converter("Tile", [6, 13], replace=True)
def convert_tile(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    repeats = constant_ints(node, graph, 1)
    return _result(
        OnnxTile(repeats), node, [node.input_values[0], _input_or_blank(node, 1, repeats)]
    )


class OnnxConstantOfShape(nn.Module):
    """ONNX ConstantOfShape: the fill value is a buffer, so the output follows the module's
    device."""

    def __init__(self, shape: list[int] | None, value: Tensor) -> None:
        super().__init__()
        self.shape = shape
        self.register_buffer("value", value.reshape(()))

    def forward(self, shape: Tensor | None = None) -> Tensor:
        target = self.shape if self.shape is not None else _ints(shape)
        return self.value.expand(target).clone()


@register_converter("ConstantOfShape", [9, 20, 21, 23, 24, 25], replace=True)
def convert_constant_of_shape(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    shape = constant_ints(node, graph, 0)
    value = node.attributes.get("value")
    fill = torch.zeros(1, dtype=torch.float32) if value is None else value.to_torch()
    return _result(OnnxConstantOfShape(shape, fill), node, [_input_or_blank(node, 0, shape)])
