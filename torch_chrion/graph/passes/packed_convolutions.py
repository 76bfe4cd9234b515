"""2-D convolutions against constant weights as ``chrion::conv2d`` nodes, a ReLU folded in.

``chrion::conv2d`` computes ``aten.convolution`` (then ``relu`` when asked). On CPU, for the
channels-last input that ``channels_last_convolutions`` (which runs before) gives these
convolutions, it runs oneDNN with the weight reordered once instead of on every call, the ReLU
fused into the convolution (Note [CPU packed convolutions] in csrc/kernels/convolution.cpp: 8-25%
less per layer of the CRNN on the benchmark VM, its one-channel first layer half); on other
devices it is aten.convolution, as before. Results differ by rounding only.

Rewritten: 2-D, untransposed float32 convolutions whose weight (and bias, if any) are constants;
a ``relu`` is folded when it is the convolution's only reader.
"""

from __future__ import annotations

import torch
from torch import fx

from ...ops import ensure_loaded
from ..nodes import fetch_attr

aten = torch.ops.aten


def _float32_constant(gm: fx.GraphModule, arg: object, dims: int | None) -> bool:
    if not isinstance(arg, fx.Node) or arg.op != "get_attr":
        return False
    value = fetch_attr(gm, str(arg.target))
    return (
        isinstance(value, torch.Tensor)
        and value.layout == torch.strided
        and value.dtype == torch.float32
        and (dims is None or value.dim() == dims)
    )


def _rewritable(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.target is not aten.convolution.default:
        return False
    _, weight, bias, stride, _, _, transposed, output_padding, _ = node.args
    return (
        not transposed
        and len(stride) == 2
        and not any(output_padding)
        and _float32_constant(gm, weight, 4)
        and (bias is None or _float32_constant(gm, bias, 1))
    )


def packed_convolutions(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite ``gm``'s 2-D constant-weight float32 convolutions into ``chrion::conv2d`` (in
    place), folding a ReLU that only reads one."""
    ensure_loaded()
    graph = gm.graph
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_function" or not _rewritable(gm, node):
            continue
        source, weight, bias, stride, padding, dilation, _, _, groups = node.args
        readers = list(node.users)
        relu = readers[0] if len(readers) == 1 and readers[0].target is aten.relu.default else None
        with graph.inserting_before(node):
            conv = graph.call_function(
                torch.ops.chrion.conv2d.default,
                (source, weight, bias, stride, padding, dilation, groups, relu is not None),
            )
        conv.meta.update(node.meta)
        node.replace_all_uses_with(conv)
        graph.erase_node(node)
        if relu is not None:
            relu.replace_all_uses_with(conv)
            graph.erase_node(relu)
        changed = True
    if changed:
        gm.recompile()
    return gm
