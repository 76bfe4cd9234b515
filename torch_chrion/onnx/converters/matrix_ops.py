"""Size and Trilu, which onnx2torch 1.5.15 lacks (exporters emit Size for numel and Trilu
for attention masks), and Clip with bounds computed by the graph, which it refuses."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._onnx2torch import OnnxGraph, OnnxNode, OperationConverterResult, register_converter
from ._constants import constant_input, constant_ints
from .shape_ops import _input_or_blank, _result


class OnnxSize(nn.Module):
    """ONNX Size: the element count as an int64 scalar."""

    def forward(self, data: Tensor) -> Tensor:
        return torch.tensor(data.numel(), dtype=torch.int64, device=data.device)


@register_converter("Size", [1, 13, 19, 21, 23, 24, 25])
def convert_size(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return _result(OnnxSize(), node, [node.input_values[0]])


class OnnxTrilu(nn.Module):
    """ONNX Trilu: the upper (triu) or lower (tril) triangle of the last two axes, from
    diagonal ``k``."""

    def __init__(self, upper: bool, k: int | None) -> None:
        super().__init__()
        self.upper = upper
        self.k = k

    def forward(self, data: Tensor, k: Tensor | None = None) -> Tensor:
        diagonal = self.k if self.k is not None else int(k)
        return torch.triu(data, diagonal) if self.upper else torch.tril(data, diagonal)


@register_converter("Trilu", [14])
def convert_trilu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    k = constant_ints(node, graph, 1)
    given = len(node.input_values) > 1 and bool(node.input_values[1])
    static_k = k[0] if k is not None else (None if given else 0)
    module = OnnxTrilu(bool(node.attributes.get("upper", 1)), static_k)
    return _result(module, node, [node.input_values[0], _input_or_blank(node, 1, static_k)])


class OnnxClip(nn.Module):
    """ONNX Clip-11+: bounds read at conversion time when constant, else fed tensors. When
    min > max every element becomes max, as numpy.clip and the spec do (torch.clamp too)."""

    takes_blank_inputs = True  # a left-out bound arrives as None, in its position

    def __init__(self, low: float | None, high: float | None) -> None:
        super().__init__()
        self.low = low
        self.high = high

    def forward(
        self, data: Tensor, low: Tensor | None = None, high: Tensor | None = None
    ) -> Tensor:
        low = self.low if self.low is not None else low
        high = self.high if self.high is not None else high
        if low is None and high is None:
            return data.clone()
        return torch.clamp(data, min=low, max=high)


@register_converter("Clip", [11, 12, 13], replace=True)
def convert_clip(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    bounds = []
    for index in (1, 2):
        value = constant_input(node, graph, index)
        bounds.append(None if value is None else value.reshape(-1)[0].item())
    inputs = [node.input_values[0]] + [_input_or_blank(node, i, bounds[i - 1]) for i in (1, 2)]
    return _result(OnnxClip(*bounds), node, inputs)
