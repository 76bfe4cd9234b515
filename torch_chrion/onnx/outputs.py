"""ONNX value names -> fx nodes, so every consumer and every graph output gets exactly the
value it names.

onnx2torch's own ``convert`` returns a multi-output node's whole tuple when a graph output
comes from it, drops repeated outputs, and cannot return a graph input or an initializer as an
output. Here every ONNX value resolves to one fx node: the element ``getitem(node, i)`` of a
multi-output node, a ``get_attr`` of an initializer, or a placeholder.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from ..errors import ModelError


class ValueTable:
    """The fx node for each ONNX value name of one graph being built."""

    def __init__(
        self,
        graph: fx.Graph,
        initializers: nn.Module,
        load_initializer: Callable[[str], torch.Tensor | None],
    ) -> None:
        self._graph = graph
        self._initializers = initializers
        self._load_initializer = load_initializer
        self._values: dict[str, fx.Node] = {}
        # value name -> (multi-output fx node, element index), resolved to getitem on first use
        self._elements: dict[str, tuple[fx.Node, int]] = {}

    def set(self, name: str, node: fx.Node) -> None:
        """Bind a value to the fx node that computes exactly it."""
        self._values[name] = node

    def set_outputs(self, names: Sequence[str], node: fx.Node) -> None:
        """Bind the outputs of a converted ONNX node: one output is the node's value itself,
        several are the elements of the tuple it returns (blank names are skipped outputs)."""
        if len(names) == 1:
            self.set(names[0], node)
            return
        for index, name in enumerate(names):
            if name:
                self._elements[name] = (node, index)

    def __contains__(self, name: str) -> bool:
        return name in self._values or name in self._elements or self._is_initializer(name)

    def _is_initializer(self, name: str) -> bool:
        return self._load_initializer(name) is not None

    def get(self, name: str) -> fx.Node:
        """The fx node for a value, creating its getitem or get_attr node on first use."""
        if name in self._values:
            return self._values[name]
        if name in self._elements:
            producer, index = self._elements.pop(name)
            node = self._graph.call_function(operator.getitem, (producer, index))
            self._values[name] = node
            return node
        tensor = self._load_initializer(name)
        if tensor is not None:
            attr = f"init_{len(self._initializers._buffers)}"
            self._initializers.register_buffer(attr, tensor)
            node = self._graph.get_attr(f"initializers.{attr}")
            self._values[name] = node
            return node
        raise ModelError(f"value {name!r} is used before it is defined (or never defined)")


def output_copy(value: Any) -> Any:
    """A new value equal to ``value``: tensors cloned, sequences copied element by element,
    None (an empty optional) as it is."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(output_copy(v) for v in value)
    return value


def _copied_if_alias(graph: fx.Graph, node: fx.Node) -> fx.Node:
    if node.op not in ("placeholder", "get_attr"):
        return node
    return graph.call_function(output_copy, (node,))


def emit_outputs(
    graph: fx.Graph, table: ValueTable, output_names: Sequence[str], as_tuple: bool
) -> None:
    """Write the graph's output node: one value, or a tuple in the ONNX output order (always
    a tuple when ``as_tuple``, as subgraph callers expect). Repeated names stay repeated.

    An output that is a graph input or an initializer is returned as a copy, as onnxruntime
    returns it: the caller may write to its outputs without changing its inputs or the
    model's weights (and a graph of no nodes still computes something).
    """
    values = [_copied_if_alias(graph, table.get(name)) for name in output_names]
    if len(values) == 1 and not as_tuple:
        graph.output(values[0])
    else:
        graph.output(tuple(values))
