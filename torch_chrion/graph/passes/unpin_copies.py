"""Drops the traced device from ``aten._to_copy`` calls, so the copy follows its lane's device.

``x.to("cpu")`` or ``x.float()`` in a model traced on CPU records ``_to_copy(x, device=cpu)``.
Once the graph is spread over devices, a node runs where its lane is; pinning it to the tracing
device would pull tensors back to the CPU behind the scheduler's back.
"""

from __future__ import annotations

import torch
from torch import fx


def unpin_copies(gm: fx.GraphModule, traced_on: torch.device) -> fx.GraphModule:
    """Remove ``device=traced_on`` from the ``aten._to_copy`` nodes of ``gm`` (in place)."""
    for node in gm.graph.nodes:
        if node.target is torch.ops.aten._to_copy.default and "device" in node.kwargs:
            if torch.device(node.kwargs["device"]) == traced_on:
                node.kwargs = {k: v for k, v in node.kwargs.items() if k != "device"}
    gm.recompile()
    return gm
