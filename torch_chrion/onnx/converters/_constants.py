"""Reading a node's constant inputs at conversion time.

Shape-taking operators (Reshape, Squeeze, Split, Pad, ...) are traceable with
``make_fx(tracing_mode="real")`` only when their shape arguments are Python values, not
tensors inspected while running. Where such an input is a constant (an initializer or the
output of a Constant node, of this graph or an enclosing one), the converters here read it
once, when converting.
"""

from __future__ import annotations

import numpy as np
import torch

from .._onnx2torch import OnnxGraph, OnnxNode


def constant_input(node: OnnxNode, graph: OnnxGraph, index: int) -> torch.Tensor | None:
    """The value of input ``index`` when it is known at conversion time, else None.

    Known means an initializer or Constant-node output of the node's graph or of an enclosing
    graph (see :class:`torch_chrion.onnx.scope.OnnxScope`, the graph every converter gets).
    A missing or blank input is None too.
    """
    if index >= len(node.input_values) or not node.input_values[index]:
        return None
    tensor = graph.initializers.get(node.input_values[index])
    return None if tensor is None else tensor.to_torch()


def constant_ints(node: OnnxNode, graph: OnnxGraph, index: int) -> list[int] | None:
    """A constant integer input as a Python list (1-D), or None when not constant."""
    value = constant_input(node, graph, index)
    if value is None:
        return None
    return [int(v) for v in np.asarray(value.numpy()).reshape(-1)]


def is_given(node: OnnxNode, index: int) -> bool:
    """Whether optional input ``index`` is present (not missing, not blank)."""
    return index < len(node.input_values) and bool(node.input_values[index])
