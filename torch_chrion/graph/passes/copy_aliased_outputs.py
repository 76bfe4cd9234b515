"""Gives every graph output its own storage: an output that is an input or a weight is copied.

A model whose output is one of its inputs (an ONNX Identity or inference Dropout, a graph that
only reshapes nothing) traces to a graph whose output node reads a placeholder or a get_attr
directly. Returned as it is, the caller would get its own input tensor back, or the model's
weight, and writing into the result would change the next call. onnxruntime returns fresh
buffers; so does torch_chrion, at the cost of one ``aten.clone`` node per such output.
"""

from __future__ import annotations

import torch
from torch import fx


def copy_aliased_outputs(gm: fx.GraphModule) -> fx.GraphModule:
    """Route each output that reads a placeholder or get_attr through ``aten.clone`` (in place)."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    copies: dict[fx.Node, fx.Node] = {}

    def copy(node: fx.Node) -> fx.Node:
        if node.op not in ("placeholder", "get_attr"):
            return node
        if node not in copies:
            with gm.graph.inserting_before(output):
                copies[node] = gm.graph.call_function(torch.ops.aten.clone.default, (node,))
        return copies[node]

    output.args = fx.node.map_arg(output.args, copy)
    if copies:
        gm.recompile()
    return gm
