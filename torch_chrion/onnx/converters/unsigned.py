"""Add / Sub / Mul / Div on uint16, uint32 and uint64, which torch stores but has no
arithmetic kernels for ("add_stub" not implemented for 'UInt16').

onnx2torch's module runs unchanged on every other dtype. Unsigned inputs are computed in
int64 and wrapped back to their width, which is ONNX's modular unsigned arithmetic (for
uint64, int64's two's-complement wrap is the same bits).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import _onnx2torch
from .._onnx2torch import OnnxGraph, OnnxNode, OperationConverterResult, register_converter

_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)
_OPS = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}
_VERSIONS = [7, 13, 14]


class UnsignedSafe(nn.Module):
    """onnx2torch's elementwise module, with an int64 detour for wide unsigned types."""

    def __init__(self, inner: nn.Module, op_type: str) -> None:
        super().__init__()
        self.inner = inner
        self.op_type = op_type

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        if first.dtype not in _UNSIGNED:
            return self.inner(first, second)
        dtype = first.dtype
        if dtype == torch.uint64:
            a, b = first.view(torch.int64), second.view(torch.int64)
        else:
            a, b = first.to(torch.int64), second.to(torch.int64)
        if self.op_type == "Div":
            result = torch.div(a, b, rounding_mode="trunc")
        else:
            result = _OPS[self.op_type](a, b)
        if dtype == torch.uint64:
            return result.view(torch.uint64)
        return (result & ((1 << (8 * dtype.itemsize)) - 1)).to(dtype)


def _wrapping(op_type: str, version: int):  # noqa: ANN202
    original = _onnx2torch.get_converter("", op_type, version)

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        module, mapping = original(node, graph)
        return OperationConverterResult(UnsignedSafe(module, op_type), mapping)

    return convert


for _op in _OPS:
    for _version in _VERSIONS:
        register_converter(_op, [_version], replace=True)(_wrapping(_op, _version))
