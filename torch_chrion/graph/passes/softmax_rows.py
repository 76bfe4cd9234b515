"""softmax and log_softmax along the last dimension as ``chrion::softmax`` nodes.

ATen's CPU softmax exponentiates with Sleef's expf; ``chrion::softmax`` runs the recurrent
kernels' gate exp (a few ulp) in three passes per row, and writes a large log_softmax past the
caches (Note [Softmax rows] in csrc/kernels/softmax_cpu_impl.h): the LSTM language model's
log_softmax over 140 x 10000 scores took 680-730 us on one thread of the benchmark VM against
ATen's 960-1220. Other devices run ATen's op. Results differ by rounding only.

Rewritten: ``aten._softmax`` / ``aten._log_softmax`` of a float32 value along its last dimension
(``half_to_float`` false); other dimensions and dtypes stay as they are.
"""

from __future__ import annotations

import torch
from torch import fx

from ...ops import ensure_loaded
from ..nodes import replace_matches

aten = torch.ops.aten

_LOG = {aten._softmax.default: False, aten._log_softmax.default: True}


def _along_last(node: fx.Node) -> tuple[fx.Node, int, bool] | None:
    """(input, dim, log) when ``node`` is a float32 softmax or log_softmax along its last dim."""
    if node.target not in _LOG or len(node.args) != 3 or node.kwargs:
        return None
    x, dim, half_to_float = node.args
    value = x.meta.get("val") if isinstance(x, fx.Node) else None
    if half_to_float or not isinstance(value, torch.Tensor) or value.dtype != torch.float32:
        return None
    if value.dim() == 0 or not isinstance(dim, int) or dim % value.dim() != value.dim() - 1:
        return None
    return x, dim, _LOG[node.target]


def softmax_rows(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite ``gm``'s softmax and log_softmax along the last dimension (in place)."""
    ensure_loaded()
    return replace_matches(gm, _along_last, torch.ops.chrion.softmax.default)
