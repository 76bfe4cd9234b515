"""Reading a node's constant inputs at conversion time.

Shape-taking operators (Reshape, Squeeze, Split, Pad, ...) are traceable with
``make_fx(tracing_mode="real")`` only when their shape arguments are Python values, not
tensors inspected while running. Where such an input is an initializer or the output of a
Constant node, the converters here read it once, when converting.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from .._onnx2torch import OnnxGraph, OnnxNode


def constant_input(node: OnnxNode, graph: OnnxGraph, index: int) -> torch.Tensor | None:
    """The value of input ``index`` when it is known at conversion time, else None.

    Known means an initializer of the node's graph or the output of a Constant node in it.
    A missing or blank input is None too.
    """
    if index >= len(node.input_values) or not node.input_values[index]:
        return None
    name = node.input_values[index]
    if name in graph.initializers:
        return graph.initializers[name].to_torch()
    try:
        producer, _ = graph.value_as_node_output(name)
    except KeyError:
        return None
    if producer.operation_type != "Constant" or producer.domain not in ("", "ai.onnx"):
        return None
    return _constant_node_value(producer.proto)


def _constant_node_value(proto: onnx.NodeProto) -> torch.Tensor | None:
    for attribute in proto.attribute:
        if attribute.name == "value":
            return torch.from_numpy(numpy_helper.to_array(attribute.t).copy())
        if attribute.name == "value_float":
            return torch.tensor(attribute.f, dtype=torch.float32)
        if attribute.name == "value_floats":
            return torch.tensor(list(attribute.floats), dtype=torch.float32)
        if attribute.name == "value_int":
            return torch.tensor(attribute.i, dtype=torch.int64)
        if attribute.name == "value_ints":
            return torch.tensor(list(attribute.ints), dtype=torch.int64)
    return None  # sparse_value / strings: not shape arguments


def constant_ints(node: OnnxNode, graph: OnnxGraph, index: int) -> list[int] | None:
    """A constant integer input as a Python list (1-D), or None when not constant."""
    value = constant_input(node, graph, index)
    if value is None:
        return None
    return [int(v) for v in np.asarray(value.numpy()).reshape(-1)]


def is_given(node: OnnxNode, index: int) -> bool:
    """Whether optional input ``index`` is present (not missing, not blank)."""
    return index < len(node.input_values) and bool(node.input_values[index])
