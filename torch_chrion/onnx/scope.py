"""The graph as a converter sees it: every value known at conversion time is an initializer.

onnx2torch's converters (and ours) read weights, biases and shape arguments from
``graph.initializers`` and input ranks from ``graph.value_info``. A real model also keeps
constants elsewhere: outputs of Constant nodes (what exporters emit for folded weights),
Identity nodes of a constant (what torch.onnx emits for each further use of a shared weight: a
decoder GRU unrolled over eight steps read its weights through seven), and, inside If / Loop /
Scan bodies, initializers and Constant outputs of the enclosing graphs.
:class:`OnnxScope` presents all of those as initializers, and the enclosing graphs' value_info
as the subgraph's own, so every converter resolves them alike, with no converter changed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ._onnx2torch import OnnxGraph, OnnxNode, OnnxTensor
from .opsets import is_default_domain


def constant_node_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node outputs, or None for the kinds that are no tensor of
    numbers (strings, sparse values)."""
    for attribute in node.attribute:
        if attribute.name == "value":
            return attribute.t
        if attribute.name == "value_float":
            return numpy_helper.from_array(np.array(attribute.f, dtype=np.float32))
        if attribute.name == "value_floats":
            return numpy_helper.from_array(np.array(list(attribute.floats), dtype=np.float32))
        if attribute.name == "value_int":
            return numpy_helper.from_array(np.array(attribute.i, dtype=np.int64))
        if attribute.name == "value_ints":
            return numpy_helper.from_array(np.array(list(attribute.ints), dtype=np.int64))
    return None


def is_constant_identity(node: OnnxNode, graph: OnnxGraph) -> bool:
    """An Identity node whose input is a constant of ``graph`` (so its output is one too)."""
    return (
        node.operation_type == "Identity"
        and is_default_domain(node.domain)
        and bool(node.output_values)
        and node.output_values[0] in graph.initializers
    )


class OnnxScope(OnnxGraph):
    """One graph (the main graph or a subgraph) with the constants and value_info of every
    enclosing scope in view.

    ``initializers`` holds, in order of precedence: the graph's own initializers, the outputs
    of its Constant nodes, then the constants of the enclosing scopes that no name of this
    graph shadows; and the output of every Identity node of one of those. ``value_info``
    likewise adds the enclosing scopes' entries for the names this graph reads from them.
    """

    def __init__(self, graph: onnx.GraphProto, parent: OnnxScope | None = None) -> None:
        super().__init__(graph)
        local = set(self.input_values) | set(self._node_output_values)
        local |= {init.name for init in graph.initializer}
        constants: dict[str, OnnxTensor] = {}
        value_info: dict[str, onnx.ValueInfoProto] = {}
        if parent is not None:
            constants.update((k, v) for k, v in parent.initializers.items() if k not in local)
            value_info.update((k, v) for k, v in parent.value_info.items() if k not in local)
        for node in graph.node:
            if node.op_type == "Constant" and is_default_domain(node.domain) and node.output:
                value = constant_node_value(node)
                if value is not None:
                    constants[node.output[0]] = OnnxTensor(value)
        constants.update(self._initializers)
        for node in graph.node:  # nodes are in topological order: chains of Identity resolve
            if (
                node.op_type == "Identity"
                and is_default_domain(node.domain)
                and node.output
                and node.input[0] in constants
            ):
                constants[node.output[0]] = constants[node.input[0]]
        value_info.update(self._value_info)
        self._initializers = constants
        self._value_info = value_info
        self._derived: dict[Hashable, Any] = {}

    def derive(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """``make()`` once per ``key``: what converters derive from this graph's constants, by
        what it was derived from, so that nodes reading the same constant share one tensor (one
        copy in memory and in the cache, packed once by the recurrent kernels, whose cache is
        keyed by tensor): a decoder unrolled over eight steps reads its GRU weights eight
        times."""
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]

    def constant(self, name: str) -> torch.Tensor | None:
        """The tensor of constant ``name`` (one tensor per constant, whatever its names), or
        None."""
        tensor = self._initializers.get(name)
        if tensor is None:
            return None
        return self.derive(("constant", id(tensor)), tensor.to_torch)

    @property
    def initializers(self) -> Mapping[str, OnnxTensor]:
        return MappingProxyType(self._initializers)

    @property
    def value_info(self) -> Mapping[str, onnx.ValueInfoProto]:
        return MappingProxyType(self._value_info)
