"""Row lookups (``table[index]``: an embedding, ONNX Gather on axis 0) as one
``chrion::gather_rows`` node.

onnx2torch and make_fx record ``aten.index.Tensor(table, [index])``, whose CPU kernel picks the
rows element by element with ATen's general advanced-indexing loop: 97 us for the LSTM language
model's 35 x 4 tokens of a 10000 x 512 table on one thread of the benchmark VM, 5x its
embedding's time. ``chrion::gather_rows`` copies whole rows and wraps negative indices as
``index`` does (Note [Gather rows] in csrc/kernels/gather.cpp).

Only one integer index tensor on the first dimension is rewritten: a boolean mask, several
index tensors or an index on a later dimension stays as it is.
"""

from __future__ import annotations

import torch
from torch import fx

from ...ops import ensure_loaded
from ..nodes import replace_matches

aten = torch.ops.aten


def _row_lookup(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(table, index) when ``node`` is ``aten.index.Tensor(table, [index])`` with an int64 or
    int32 index, else None."""
    if node.target is not aten.index.Tensor or len(node.args) != 2:
        return None
    table, indices = node.args
    if not isinstance(table, fx.Node) or not isinstance(indices, (list, tuple)):
        return None
    if len(indices) != 1 or not isinstance(indices[0], fx.Node):
        return None
    index = indices[0].meta.get("val")
    if not isinstance(index, torch.Tensor) or index.dtype not in (torch.int64, torch.int32):
        return None
    return table, indices[0]


def gather_rows(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite ``gm``'s row lookups (in place)."""
    ensure_loaded()
    return replace_matches(gm, _row_lookup, torch.ops.chrion.gather_rows.default)
