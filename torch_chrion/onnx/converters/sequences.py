"""Sequence and Optional operators: a sequence is a Python list of tensors, an optional is
its value or None. If and Loop carry them (ONNX's own If/Loop test cases do), so they run as
Python nodes like those operators do.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ExecutionError
from .._onnx2torch import OnnxGraph, OnnxNode, OperationConverterResult, register_converter
from .shape_ops import _result


class _Blanks(nn.Module):
    takes_blank_inputs = True  # a left-out optional input arrives as None, in its position


class SequenceEmpty(_Blanks):
    """An empty sequence."""

    def forward(self) -> list[Tensor]:
        return []


class SequenceConstruct(_Blanks):
    """A sequence of the inputs."""

    def forward(self, *tensors: Tensor) -> list[Tensor]:
        return list(tensors)


def _position(position: Tensor | None, length: int, default: int) -> int:
    index = default if position is None else int(position)
    return index + length if index < 0 else index


class SequenceInsert(_Blanks):
    """A new sequence with ``tensor`` inserted at ``position`` (default: the end)."""

    def forward(
        self, sequence: list[Tensor], tensor: Tensor, position: Tensor | None = None
    ) -> list[Tensor]:
        result = list(sequence)
        result.insert(_position(position, len(sequence), len(sequence)), tensor)
        return result


class SequenceErase(_Blanks):
    """A new sequence without the element at ``position`` (default: the last)."""

    def forward(self, sequence: list[Tensor], position: Tensor | None = None) -> list[Tensor]:
        result = list(sequence)
        del result[_position(position, len(sequence), -1)]
        return result


class SequenceAt(_Blanks):
    """The element at ``position``."""

    def forward(self, sequence: list[Tensor], position: Tensor) -> Tensor:
        return sequence[_position(position, len(sequence), 0)]


class SequenceLength(_Blanks):
    """The number of elements, as an int64 scalar."""

    def forward(self, sequence: list[Tensor]) -> Tensor:
        return torch.tensor(len(sequence), dtype=torch.int64)


class SplitToSequence(_Blanks):
    """Split into a sequence: by sizes, in chunks of a scalar size, or into single slices."""

    def __init__(self, axis: int, keepdims: bool) -> None:
        super().__init__()
        self.axis = axis
        self.keepdims = keepdims

    def forward(self, data: Tensor, split: Tensor | None = None) -> list[Tensor]:
        if split is None:
            parts = torch.split(data, 1, dim=self.axis)
            return [p.squeeze(self.axis) for p in parts] if not self.keepdims else list(parts)
        if split.dim() == 0:
            return list(torch.split(data, int(split), dim=self.axis))
        return list(torch.split(data, [int(s) for s in split.tolist()], dim=self.axis))


class ConcatFromSequence(_Blanks):
    """Concatenate the elements along ``axis``, or stack them along a new one."""

    def __init__(self, axis: int, new_axis: bool) -> None:
        super().__init__()
        self.axis = axis
        self.new_axis = new_axis

    def forward(self, sequence: list[Tensor]) -> Tensor:
        return torch.stack(sequence, self.axis) if self.new_axis else torch.cat(sequence, self.axis)


class OptionalOf(_Blanks):
    """An optional holding the input, or an empty optional (None)."""

    def forward(self, value: Tensor | list[Tensor] | None = None) -> Tensor | list[Tensor] | None:
        return value


class OptionalHasElement(_Blanks):
    """Whether the optional holds a value, as a bool scalar."""

    def forward(self, value: Tensor | list[Tensor] | None = None) -> Tensor:
        return torch.tensor(value is not None)


class OptionalGetElement(_Blanks):
    """The optional's value (a plain tensor or sequence passes through)."""

    def forward(self, value: Tensor | list[Tensor] | None) -> Tensor | list[Tensor]:
        if value is None:
            raise ExecutionError("OptionalGetElement of an empty optional")
        return value


def _simple(module_type: type[nn.Module]):  # noqa: ANN202
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        return _result(module_type(), node, list(node.input_values))

    convert.__name__ = f"convert_{module_type.__name__.lower()}"
    return convert


for _op, _module in {
    "SequenceEmpty": SequenceEmpty,
    "SequenceConstruct": SequenceConstruct,
    "SequenceInsert": SequenceInsert,
    "SequenceErase": SequenceErase,
    "SequenceAt": SequenceAt,
    "SequenceLength": SequenceLength,
}.items():
    register_converter(_op, [11])(_simple(_module))
register_converter("Optional", [15])(_simple(OptionalOf))
register_converter("OptionalHasElement", [15, 18])(_simple(OptionalHasElement))
register_converter("OptionalGetElement", [15, 18])(_simple(OptionalGetElement))


@register_converter("SplitToSequence", [11])
def convert_split_to_sequence(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    module = SplitToSequence(
        node.attributes.get("axis", 0), bool(node.attributes.get("keepdims", 1))
    )
    return _result(module, node, list(node.input_values))


@register_converter("ConcatFromSequence", [11])
def convert_concat_from_sequence(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    module = ConcatFromSequence(node.attributes["axis"], bool(node.attributes.get("new_axis", 0)))
    return _result(module, node, list(node.input_values))
