"""The graph as a converter sees it: every value known at conversion time is an initializer.

onnx2torch's converters (and ours) read weights, biases and shape arguments from
``graph.initializers`` and input ranks from ``graph.value_info``. A real model also keeps
constants elsewhere: outputs of Constant nodes (what exporters emit for folded weights), and,
inside If / Loop / Scan bodies, initializers and Constant outputs of the enclosing graphs.
:class:`OnnxScope` presents all of those as initializers, and the enclosing graphs' value_info
as the subgraph's own, so every converter resolves them alike, with no converter changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
import onnx
from onnx import numpy_helper

from ._onnx2torch import OnnxGraph, OnnxTensor
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


class OnnxScope(OnnxGraph):
    """One graph (the main graph or a subgraph) with the constants and value_info of every
    enclosing scope in view.

    ``initializers`` holds, in order of precedence: the graph's own initializers, the outputs
    of its Constant nodes, then the constants of the enclosing scopes that no name of this
    graph shadows. ``value_info`` likewise adds the enclosing scopes' entries for the names
    this graph reads from them.
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
        value_info.update(self._value_info)
        self._initializers = constants
        self._value_info = value_info

    @property
    def initializers(self) -> Mapping[str, OnnxTensor]:
        return MappingProxyType(self._initializers)

    @property
    def value_info(self) -> Mapping[str, onnx.ValueInfoProto]:
        return MappingProxyType(self._value_info)
