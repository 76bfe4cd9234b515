"""Schema versions onnx2torch 1.5.15 has no converter for.

Two kinds:

* Version bumps that only widen the type constraints (Reshape-19/21, Transpose-21,
  Squeeze-21, Identity-19, Shape-19, Conv-22, ...): the inputs, outputs and attributes, with
  their defaults, are those of the version onnx2torch handles, so that converter is
  registered for the new version too. The schemas are compared, not listed by hand.
* Versions whose meaning changed: ReduceX-18 (axes became an input), ReduceMax/Min-20
  (booleans), Cast-19+ (saturate, newer types), CastLike. Converters for those are here;
  Split-18, Pad-18/19 and ConstantOfShape-20 are in ``shape_ops``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import onnx
import onnx.defs
import torch
from torch import Tensor, nn

from .. import _onnx2torch
from .._onnx2torch import OnnxGraph, OnnxNode, OperationConverterResult, register_converter
from ._constants import constant_ints, is_given
from ._dtypes import torch_dtype
from .shape_ops import _input_or_blank, _ints, _result

# --- Reduce with axes as an input --------------------------------------------------------------


def _sum_of_squares(x: Tensor, dim: list[int], keepdim: bool) -> Tensor:
    return torch.sum(x * x, dim=dim, keepdim=keepdim)


def _prod(x: Tensor, dim: list[int], keepdim: bool) -> Tensor:
    for axis in sorted(dim, reverse=True):  # torch.prod takes one axis at a time
        x = torch.prod(x, dim=axis, keepdim=keepdim)
    return x


_REDUCTIONS: dict[str, Callable[[Tensor, list[int], bool], Tensor]] = {
    "ReduceSum": lambda x, d, k: torch.sum(x, dim=d, keepdim=k),
    "ReduceMean": lambda x, d, k: torch.mean(x, dim=d, keepdim=k),
    "ReduceMax": lambda x, d, k: torch.amax(x, dim=d, keepdim=k),
    "ReduceMin": lambda x, d, k: torch.amin(x, dim=d, keepdim=k),
    "ReduceProd": _prod,
    "ReduceL1": lambda x, d, k: torch.sum(torch.abs(x), dim=d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.sqrt(_sum_of_squares(x, d, k)),
    "ReduceLogSum": lambda x, d, k: torch.log(torch.sum(x, dim=d, keepdim=k)),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
    "ReduceSumSquare": _sum_of_squares,
}


class OnnxReduce(nn.Module):
    """ONNX ReduceX with axes given as an input (static or fed), keepdims and
    noop_with_empty_axes. Max/Min of an empty set are -inf/+inf, as the spec says."""

    def __init__(
        self, op_type: str, axes: list[int] | None, keepdims: bool, noop_with_empty_axes: bool
    ) -> None:
        super().__init__()
        self.op_type = op_type
        self.axes = axes
        self.keepdims = keepdims
        self.noop_with_empty_axes = noop_with_empty_axes

    def forward(self, data: Tensor, axes: Tensor | None = None) -> Tensor:
        chosen = self.axes if self.axes is not None else _ints(axes)
        if not chosen:
            if self.noop_with_empty_axes:
                return data
            chosen = list(range(data.dim()))
        chosen = sorted(a % data.dim() for a in chosen) if data.dim() else []
        if self.op_type in ("ReduceMax", "ReduceMin") and any(data.shape[a] == 0 for a in chosen):
            shape = [1 if a in chosen else s for a, s in enumerate(data.shape)]
            if not self.keepdims:
                shape = [s for a, s in enumerate(data.shape) if a not in chosen]
            fill = float("-inf") if self.op_type == "ReduceMax" else float("inf")
            if data.dtype == torch.bool:  # any() / all() of nothing
                fill = self.op_type == "ReduceMin"
            return torch.full(shape, fill, dtype=data.dtype, device=data.device)
        if not chosen:  # a scalar: every reduction of one element is itself, except these
            return _REDUCTIONS[self.op_type](data.reshape(1), [0], False).reshape(())
        reduce = _REDUCTIONS[self.op_type]
        if data.dtype == torch.bool and self.op_type in ("ReduceMax", "ReduceMin"):
            reduce_bool = torch.any if self.op_type == "ReduceMax" else torch.all
            for axis in reversed(chosen):
                data = reduce_bool(data, dim=axis, keepdim=self.keepdims)
            return data
        return reduce(data, chosen, self.keepdims)


def convert_reduce(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """ReduceX whose axes are an (optional) input: ReduceSum-13, the others from 18."""
    axes = constant_ints(node, graph, 1)
    if axes is None and not is_given(node, 1):
        axes = []
    module = OnnxReduce(
        node.operation_type,
        axes,
        keepdims=bool(node.attributes.get("keepdims", 1)),
        noop_with_empty_axes=bool(node.attributes.get("noop_with_empty_axes", 0)),
    )
    return _result(module, node, [node.input_values[0], _input_or_blank(node, 1, axes)])


register_converter("ReduceSum", [13], replace=True)(convert_reduce)
for _op in _REDUCTIONS:
    if _op != "ReduceSum":
        register_converter(_op, [18])(convert_reduce)
for _op in ("ReduceMax", "ReduceMin"):
    register_converter(_op, [20])(convert_reduce)


# --- Cast / CastLike -------------------------------------------------------------------------


class OnnxCast(nn.Module):
    """ONNX Cast / CastLike. With ``saturate`` (the default), values beyond a float8 type's
    range become its largest value, as the spec says; torch's own cast would give NaN."""

    def __init__(self, dtype: torch.dtype | None, saturate: bool) -> None:
        super().__init__()
        self.dtype = dtype
        self.saturate = saturate

    def forward(self, data: Tensor, like: Tensor | None = None) -> Tensor:
        dtype = self.dtype if self.dtype is not None else like.dtype
        if (
            self.saturate
            and dtype.is_floating_point
            and dtype.itemsize == 1
            and data.is_floating_point()
        ):
            limit = torch.finfo(dtype).max
            data = torch.where(torch.isnan(data), data, data.clamp(-limit, limit))
        return data.to(dtype)


@register_converter("Cast", [6, 9, 13, 19, 21, 23, 24, 25], replace=True)
def convert_cast(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    dtype = torch_dtype(node.attributes.get("to", 0))
    module = OnnxCast(dtype, bool(node.attributes.get("saturate", 1)))
    return _result(module, node, [node.input_values[0]])


@register_converter("CastLike", [15, 19, 21, 23, 24, 25])
def convert_cast_like(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    module = OnnxCast(None, bool(node.attributes.get("saturate", 1)))
    return _result(module, node, list(node.input_values[:2]))


# --- type-only version bumps -----------------------------------------------------------------


def _signature(schema: onnx.defs.OpSchema) -> tuple:
    """What a converter depends on: inputs, outputs, attributes and defaults (not types)."""
    attributes = sorted(
        (name, int(a.type), a.required, a.default_value.SerializeToString())
        for name, a in schema.attributes.items()
    )
    return (
        [(i.name, int(i.option)) for i in schema.inputs],
        [(o.name, int(o.option)) for o in schema.outputs],
        attributes,
    )


def register_type_only_bumps() -> list[tuple[str, int, int]]:
    """Register, for every newer default-domain schema version that differs from the newest
    one with a converter only in its types, that converter. Returns (op, from, to)."""
    schemas: dict[str, list[onnx.defs.OpSchema]] = defaultdict(list)
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain == "":
            schemas[schema.name].append(schema)
    added = []
    for op_type, history in schemas.items():
        history.sort(key=lambda s: s.since_version)
        base = None
        for schema in history:
            version = schema.since_version
            if _onnx2torch.has_converter("", op_type, version):
                base = schema
            elif base is not None and _signature(schema) == _signature(base):
                converter = _onnx2torch.get_converter("", op_type, base.since_version)
                register_converter(op_type, [version])(converter)
                added.append((op_type, base.since_version, version))
            else:
                base = None  # the meaning changed: later versions cannot borrow either
    return added


TYPE_ONLY_BUMPS = register_type_only_bumps()
