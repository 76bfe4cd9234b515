"""Products against a constant weight as ``chrion::dense`` nodes, their bias add folded in.

A linear layer reaches the aten graph as ``mm(x, W)`` with a constant ``W [K, N]`` (ONNX MatMul
against an initializer), often followed by a bias ``add`` through a view, or as
``addmm(b, x, W)`` (``nn.Linear`` under torch.compile). ``chrion::dense(x, W, b)`` computes the
same values; on CPU it runs the recurrent kernels' panel product against a weight packed once,
faster than ATen's MKL product here (Note [CPU dense products] in csrc/kernels/dense.cpp: a
decoder step's 1x512x500 output layer 12 us against 23, a 140x512x10000 vocabulary projection
about 6.4 ms against 11 on two threads), and the bias is added inside the product instead of in
a pass of its own over the output (0.9 ms for that projection's add). On other devices it is
addmm / mm, as before. Results differ from the unfolded graph by rounding only.

Rewritten: float32 weights of at least ``MIN_WEIGHT_ELEMENTS`` (below that a product costs a few
microseconds either way, and the op would only add its reshapes); a bias is folded when it is a 1-D
float32 constant of N elements added (alpha 1) to the product or to a view of it that nothing
else reads.
"""

from __future__ import annotations

import torch
from torch import fx

from ...ops import ensure_loaded
from ..nodes import constant_tensor, replace_with_call

aten = torch.ops.aten

MIN_WEIGHT_ELEMENTS = 1 << 16

PREFIX = "_chrion_dense_weight_"

_VIEWS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default)


def _transposed_constant(gm: fx.GraphModule, arg: object) -> torch.Tensor | None:
    """The transpose a ``t`` (or 2-D ``transpose`` / ``permute``) node of a constant reads."""
    if not isinstance(arg, fx.Node) or arg.op != "call_function":
        return None
    swaps = arg.target is aten.t.default or (
        arg.target is aten.transpose.int and sorted(arg.args[1:]) in ([0, 1], [-2, -1], [-1, 0])
    )
    swaps = swaps or (arg.target is aten.permute.default and list(arg.args[1]) in ([1, 0], [-1, 0]))
    value = constant_tensor(gm, arg.args[0]) if swaps else None
    # detached: a view of a parameter that requires grad is no leaf, and the profiler's copy of
    # the graph (copy.deepcopy) refuses non-leaf tensors; the view still shares the parameter's
    # version counter, which the kernel's packed weight follows
    return value.detach().t() if value is not None and value.dim() == 2 else None


def _weight(gm: fx.GraphModule, arg: object) -> torch.Tensor | None:
    """The constant float32 ``[K, N]`` weight ``arg`` reads (itself or transposed), if large."""
    value = constant_tensor(gm, arg)
    value = _transposed_constant(gm, arg) if value is None else value
    if value is None or value.dim() != 2 or value.dtype != torch.float32:
        return None
    return value if value.numel() >= MIN_WEIGHT_ELEMENTS else None


def _weight_node(gm: fx.GraphModule, arg: fx.Node, value: torch.Tensor) -> fx.Node:
    """A get_attr node reading ``value``: ``arg`` itself, or a new attribute holding the
    transposed view (one per weight: the CPU kernel caches its packing per tensor)."""
    if arg.op == "get_attr":
        return arg
    target = PREFIX + str(arg.args[0].target).lstrip("_").replace(".", "_")
    if not hasattr(gm, target):
        gm.register_buffer(target, value)
    return gm.graph.get_attr(target)


def _bias(gm: fx.GraphModule, arg: object, columns: int) -> bool:
    value = constant_tensor(gm, arg)
    return value is not None and value.dtype == torch.float32 and value.shape == (columns,)


def _bias_add(
    gm: fx.GraphModule, product: fx.Node, columns: int
) -> tuple[fx.Node | None, fx.Node | None]:
    """The ``add`` of a bias to ``product`` (or to its only reader, a view) and that bias, or
    ``(None, None)``."""
    if len(product.users) != 1:
        return None, None
    reader = next(iter(product.users))
    if reader.target in _VIEWS and len(reader.users) == 1:
        added, reader = reader, next(iter(reader.users))
    else:
        added = product
    if reader.target is not aten.add.Tensor or reader.kwargs.get("alpha", 1) != 1:
        return None, None
    if len(reader.args) != 2 or added not in reader.args:
        return None, None
    other = reader.args[1] if reader.args[0] is added else reader.args[0]
    if other is added or not _bias(gm, other, columns):
        return None, None
    return reader, other


def dense_products(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite ``gm``'s products against large constant float32 weights into ``chrion::dense``
    (in place), folding a following bias add."""
    ensure_loaded()
    graph = gm.graph
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.mm.default and (weight := _weight(gm, node.args[1])) is not None:
            source, weight_arg = node.args
            add, bias = _bias_add(gm, node, weight.shape[1])
        elif (
            node.target is aten.addmm.default
            and not node.kwargs
            and (weight := _weight(gm, node.args[2])) is not None
            and _bias(gm, node.args[0], weight.shape[1])
        ):
            bias, source, weight_arg = node.args
            add = None
        else:
            continue
        with graph.inserting_before(node):
            if bias is not None:  # a bias get_attr may come after the product: read it here
                bias = graph.get_attr(str(bias.target))
            weight_node = _weight_node(gm, weight_arg, weight)
        replace_with_call(graph, node, torch.ops.chrion.dense.default, (source, weight_node, bias))
        if add is not None:
            (product,) = [a for a in add.args if a.op != "get_attr"]
            add.replace_all_uses_with(product)
            graph.erase_node(add)
        changed = True
    if changed:
        graph.eliminate_dead_code()
        gm.recompile()
    return gm
