"""2-D convolutions against constant weights as ``chrion::conv2d`` nodes, their activation
folded in.

``chrion::conv2d`` computes ``aten.convolution``, then an activation (ReLU, LeakyReLU or
hardtanh / a clamp to two numbers). On CPU, for the
channels-last input that ``channels_last_convolutions`` (which runs before) gives these
convolutions, it runs oneDNN with the weight reordered once instead of on every call, the
activation fused into the convolution (Note [CPU packed convolutions] in csrc/kernels/convolution.cpp: 8-25%
less per layer of the CRNN on the benchmark VM, its one-channel first layer half); on other
devices it is aten.convolution, as before. Results differ by rounding only.

Rewritten: 2-D, untransposed float32 convolutions whose weight (and bias, if any) are constants;
an activation is folded when it is the convolution's only reader.
"""

from __future__ import annotations

import torch
from torch import fx

from ...ops import ensure_loaded
from ..nodes import constant_tensor, replace_with_call

aten = torch.ops.aten


def _float32_constant(gm: fx.GraphModule, arg: object, dims: int) -> bool:
    value = constant_tensor(gm, arg)
    return value is not None and value.dtype == torch.float32 and value.dim() == dims


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


def _activation(node: fx.Node) -> tuple[str, list[float]] | None:
    """The activation ``node`` computes on its first argument, as chrion::conv2d names it."""
    args = list(node.args[1:])
    if node.kwargs:
        return None  # arguments by name: left as they are
    if node.target is aten.relu.default:
        return "relu", []
    if node.target is aten.leaky_relu.default:
        return "leaky_relu", [float(args[0]) if args else 0.01]
    if node.target in (aten.hardtanh.default, aten.clamp.default):
        bounds = args if node.target is aten.clamp.default else (args or [-1.0, 1.0])
        if len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds):
            return ("hardtanh", [float(b) for b in bounds]) if bounds[0] <= bounds[1] else None
    return None


def packed_convolutions(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite ``gm``'s 2-D constant-weight float32 convolutions into ``chrion::conv2d`` (in
    place), folding an activation that only reads one."""
    ensure_loaded()
    graph = gm.graph
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_function" or not _rewritable(gm, node):
            continue
        source, weight, bias, stride, padding, dilation, _, _, groups = node.args
        readers = list(node.users)
        reader = readers[0] if len(readers) == 1 else None
        activation = _activation(reader) if reader is not None else None
        name, args = activation or ("none", [])
        conv = replace_with_call(
            graph,
            node,
            torch.ops.chrion.conv2d.default,
            (source, weight, bias, stride, padding, dilation, groups, name, args),
        )
        if activation is not None:
            reader.replace_all_uses_with(conv)
            graph.erase_node(reader)
        changed = True
    if changed:
        gm.recompile()
    return gm
