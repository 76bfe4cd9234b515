"""2-D convolutions computed channels-last (NHWC), their weights restrided once here.

oneDNN, which runs ATen's CPU convolutions, takes a channels-last convolution as it comes, while
an NCHW one goes through other kernels: with one input channel (a spectrogram, a grey image) the
CRDNN speech model's first 3x3 convolution (4x1x100x40 to 64 channels, two threads of the
benchmark VM) took 3.1 ms NCHW against 0.45 ms channels-last. ATen's channels-last max and
average pools are vectorised over channels too, where its NCHW max pool computes each argmax in
scalar code (the model's pools: 7-10 ms NCHW, under 1 ms channels-last).

A convolution whose weight is channels-last computes in, and returns, channels-last. So each
convolution's weight (a constant) gets a channels-last copy here, and the layout is changed only
inside regions where no node can tell: a region starts with a channels-last ``clone`` of a
convolution's input, and takes in the ops that compute the same values in any layout and keep
it (pointwise ops, batch norm, pools, and the tiling pools ``max_pool_windows`` makes). Every other
reader of a region's value (a ``view`` traced for NCHW strides, a recurrent layer, the graph's
output) gets it back contiguous through a ``clone``, so the rest of the graph, and the caller,
see the strides the graph was traced with. Each output element is the same sum, in the order
oneDNN picks for the layout (outputs agree with NCHW's to a few ulp).

A convolution whose weight is computed in the graph, a transposed one and any but 2-D stay as
they are.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from ...ops import ensure_loaded
from ..derived_weights import derived_weight
from ..nodes import drop_unread_constants, fetch_attr, reads_only_first_output

aten = torch.ops.aten

PREFIX = "_chrion_channels_last_"

# ops that compute the same values in any layout and return their first argument's
_KEEPS_LAYOUT = {
    aten.native_batch_norm.default,
    aten._native_batch_norm_legit_no_training.default,
    aten.avg_pool2d.default,
}
_KEEPING_FORMATS = (None, torch.preserve_format, torch.channels_last)


def _convolution_2d(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.target is not aten.convolution.default or node.args[6]:  # transposed
        return False
    weight = node.args[1]
    if not isinstance(weight, fx.Node) or weight.op != "get_attr":
        return False
    value = fetch_attr(gm, str(weight.target))
    return isinstance(value, torch.Tensor) and value.dim() == 4 and value.layout == torch.strided


def _keeps_layout(node: fx.Node, region: set[fx.Node]) -> bool:
    """Whether ``node`` joins ``region`` (computed channels-last, every earlier node decided)."""
    if node.op != "call_function" or not node.args:
        return False
    first = node.args[0]
    if node.target is operator.getitem:
        return node.args[1] == 0 and first in region
    if node.target is aten.clone.default:
        return node.kwargs.get("memory_format") in _KEEPING_FORMATS and first in region
    if node.target is aten.max_pool2d_with_indices.default:
        # its indices keep the layout too, where a reader could tell
        return first in region and reads_only_first_output(node)
    if node.target in _KEEPS_LAYOUT or node.target is torch.ops.chrion.max_pool_tiles.default:
        return first in region
    if torch.Tag.pointwise in getattr(node.target, "tags", ()):
        # every computed tensor operand in the region (constants broadcast per channel)
        operands = [a for a in node.all_input_nodes if a.op != "get_attr"]
        return bool(operands) and all(a in region for a in operands)
    return False


def _channels_last(weight: torch.Tensor) -> torch.Tensor:
    return weight.contiguous(memory_format=torch.channels_last)


def channels_last_convolutions(gm: fx.GraphModule) -> fx.GraphModule:
    """Run ``gm``'s 2-D convolutions with constant weights channels-last (in place)."""
    ensure_loaded()  # chrion::max_pool_tiles joins regions
    graph = gm.graph
    region: set[fx.Node] = set()  # nodes whose value is channels-last
    restrided: dict[str, str] = {}  # weight target -> its channels-last copy's
    for node in list(graph.nodes):
        if not _convolution_2d(gm, node):
            if _keeps_layout(node, region):
                region.add(node)
            continue
        source, weight = node.args[0], node.args[1]
        target = str(weight.target)
        if target not in restrided:
            restrided[target] = PREFIX + target.lstrip("_").replace(".", "_")
            value = fetch_attr(gm, target)
            gm.register_buffer(restrided[target], derived_weight(_channels_last, [value]))
        with graph.inserting_before(node):
            cl_weight = graph.get_attr(restrided[target])
            if source not in region:
                source = graph.call_function(
                    aten.clone.default, (source,), {"memory_format": torch.channels_last}
                )
        node.args = (source, cl_weight, *node.args[2:])
        region.add(node)
    for node in [n for n in graph.nodes if n in region]:
        readers = [u for u in node.users if u not in region and u.target is not operator.getitem]
        if not readers:
            continue
        with graph.inserting_after(node):
            contiguous = graph.call_function(
                aten.clone.default, (node,), {"memory_format": torch.contiguous_format}
            )
        for reader in readers:
            reader.replace_input_with(node, contiguous)
    if region:
        drop_unread_constants(gm, set(restrided))
        gm.recompile()
    return gm
