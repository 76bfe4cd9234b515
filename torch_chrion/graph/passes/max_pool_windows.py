"""Max pooling whose windows tile the input, as one ``chrion::max_pool_tiles`` node.

ATen's CPU ``max_pool2d_with_indices`` computes each output's argmax with scalar code, also when
nothing reads the indices (``F.max_pool2d``, ``nn.MaxPool2d``, ONNX MaxPool): ~15 ns an output
on the benchmark VM, 7.6 ms for a (1, 2) pool of 4x64x100x40 floats on one thread, the two pools
of the CRDNN speech model a fifth of its convolutions' time. Where the windows tile the input
(stride equal to the kernel, no padding, no dilation, floor mode), each output is the maximum of
its window's kh*kw elements, which ``chrion::max_pool_tiles`` computes at the speed of a pass
over the input, NaN propagating as in max_pool2d (Note [Max pool tiles] in
csrc/kernels/pooling.cpp). (Between a +0.0 and a -0.0 either may come out, as between
max_pool2d's tied elements.)

A pool whose indices are read, or with overlapping, padded or dilated windows, stays as it is;
so does a window of more than four elements (on a GPU lane, each element is one more kernel).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx

from ...ops import ensure_loaded
from ..nodes import reads_only_first_output, replace_first_output

aten = torch.ops.aten

MAX_WINDOW = 4  # elements: a 2x2 window is three maxima


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def _tiling_window(node: fx.Node) -> tuple[int, int] | None:
    """(kh, kw) when ``node``'s windows tile its input and only its values are read, else None."""
    args = list(node.args) + [None] * (6 - len(node.args))
    kernel, stride, padding, dilation, ceil_mode = (
        node.kwargs.get(name, args[i])
        for i, name in enumerate(("kernel_size", "stride", "padding", "dilation", "ceil_mode"), 1)
    )
    kh, kw = _pair(kernel)
    if stride not in (None, []) and _pair(stride) != (kh, kw):
        return None
    if padding not in (None, 0, []) and _pair(padding) != (0, 0):
        return None
    if dilation not in (None, 1, []) and _pair(dilation) != (1, 1):
        return None
    if ceil_mode or not 1 < kh * kw <= MAX_WINDOW:
        return None
    if not reads_only_first_output(node):
        return None  # the indices are read
    return kh, kw


def max_pool_windows(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite ``gm``'s tiling max pools whose indices nobody reads (in place)."""
    ensure_loaded()
    graph = gm.graph
    changed = False
    for node in list(graph.nodes):
        if node.target is not aten.max_pool2d_with_indices.default:
            continue
        window = _tiling_window(node)
        if window is None:
            continue
        with graph.inserting_before(node):
            result = graph.call_function(
                torch.ops.chrion.max_pool_tiles.default, (node.args[0], list(window))
            )
        replace_first_output(graph, node, result)
        changed = True
    if changed:
        gm.recompile()
    return gm
