"""One captured graph for every size of one input dimension (Note [Length-generic captures]).

Note [Length-generic captures]: capture traces with real tensors (onnx2torch modules read
shapes as values), so the aten graph holds every size it met as a constant: the graph of a
100-frame input views its activations as ``[100, 1, 2, 128]``. Captured again at another
length, a typical sequence model gives the same graph except for those view sizes. Where the
graphs captured at three sizes of one dimension differ *only* in the sizes of view-like nodes
(same nodes, same arguments otherwise, same constants), and each such node's output changes in
exactly one dimension, that dimension of the view is written ``-1`` (view infers it from the
element count) and the graph serves every size of the input dimension with no capture.

Anything else that differs (a constant made from the length, a slice bound, a node more or
less, a size that changes in two output dimensions) means the graph depends on the size in a
way a view cannot infer: no generic graph, and each shape is captured as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import fx

from .nodes import fetch_attr

_aten = torch.ops.aten
# ops whose size argument (args[1]) may say -1 for the one dimension to infer
_VIEWS = (_aten.view.default, _aten._unsafe_view.default, _aten.reshape.default)


def _plain(value: Any) -> Any:
    """A node's arguments with nodes replaced by their names, comparable with ``==``."""
    return fx.node.map_arg(value, lambda n: ("node", n.name))


def _same_constant(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return type(a) is type(b) and a == b


def _inferred_view(column: Sequence[fx.Node]) -> list[int] | None:
    """The size argument, with -1 where the outputs differ, for a view-like node whose
    captures differ only in their size argument; None if it cannot be inferred that way."""
    first = column[0]
    if first.target not in _VIEWS or len(first.args) != 2 or first.kwargs:
        return None
    if any(_plain(n.args[0]) != _plain(first.args[0]) for n in column[1:]):
        return None
    vals = [n.meta.get("val") for n in column]
    if not all(isinstance(v, torch.Tensor) for v in vals):
        return None
    shapes = [tuple(v.shape) for v in vals]
    if len({len(s) for s in shapes}) != 1:
        return None
    varying = [d for d in range(len(shapes[0])) if len({s[d] for s in shapes}) > 1]
    if len(varying) != 1:
        return None
    size = [int(d) for d in shapes[0]]
    size[varying[0]] = -1
    return size


def generalise(graphs: Sequence[fx.GraphModule]) -> fx.GraphModule | None:
    """``graphs[0]`` made to serve every size of the dimension its captures in ``graphs``
    differ in (views inferring that size), updated in place; None if the captures differ
    in anything else. The graphs must be annotated (``meta["val"]``)."""
    first = graphs[0]
    columns = list(zip(*(list(g.graph.nodes) for g in graphs), strict=False))
    if any(len(g.graph.nodes) != len(columns) for g in graphs):
        return None
    sizes: dict[str, list[int]] = {}
    for column in columns:
        node = column[0]
        if any((n.op, n.target, n.name) != (node.op, node.target, node.name) for n in column):
            return None
        if node.op == "get_attr":
            value = fetch_attr(first, node.target)
            if not all(
                _same_constant(value, fetch_attr(g, n.target))
                for g, n in zip(graphs[1:], column[1:], strict=True)
            ):
                return None
            continue
        plain = (_plain(node.args), _plain(node.kwargs))
        if all((_plain(n.args), _plain(n.kwargs)) == plain for n in column[1:]):
            continue
        size = _inferred_view(column)
        if size is None:
            return None
        sizes[node.name] = size
    for node in first.graph.nodes:
        if node.name in sizes:
            node.args = (node.args[0], sizes[node.name])
    first.recompile()
    return first
