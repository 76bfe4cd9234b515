"""Shapes, dtypes and bytes of every value of an aten graph, by fake-tensor propagation.

Writes three ``node.meta`` keys (the contract shared with profile/, schedule/ and runtime/):
``"val"`` (a FakeTensor, or a tuple of them for a multi-output op), ``"chrion_out_bytes"`` (bytes
of the node's tensor outputs) and ``"chrion_weight_bytes"`` (bytes of the get_attr tensors the
node reads directly), plus ``"chrion_weights"``: the get_attr targets the node reads (pieces of a
split recurrent layer share their weights; a memory count must add each target once).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp
from torch.utils._pytree import tree_leaves

from ..errors import ModelError
from .nodes import fetch_attr


def tensor_bytes(value: object) -> int:
    """Bytes of every tensor in ``value`` (a tensor or a nested tuple/list of them)."""
    return sum(
        t.numel() * t.element_size() for t in tree_leaves(value) if isinstance(t, torch.Tensor)
    )


def _weight_bytes(gm: fx.GraphModule, node: fx.Node) -> int:
    total = 0
    for arg in node.all_input_nodes:
        if arg.op == "get_attr":
            total += tensor_bytes(fetch_attr(gm, arg.target))
    return total


def annotate(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> fx.GraphModule:
    """Fill ``meta["val"]``, ``meta["chrion_out_bytes"]`` and ``meta["chrion_weight_bytes"]``.

    Args:
        gm: an aten graph (annotated in place).
        example_inputs: tensors (real or fake) of the shapes the graph is specialised to.

    Returns:
        ``gm``.

    Raises:
        ModelError: when a node cannot be propagated; the message quotes the node.
    """
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    # Fresh fakes of the inputs' shapes: works for real tensors and for fakes of another mode.
    with mode:
        fake_inputs = [
            torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
            if isinstance(x, torch.Tensor)
            else x
            for x in example_inputs
        ]
    try:
        FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*fake_inputs)
    except Exception as exc:  # re-raised with the node it failed on
        raise ModelError(f"shape propagation of the captured graph failed: {exc}") from exc
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            node.meta["val"] = mode.from_tensor(fetch_attr(gm, node.target))
        node.meta["chrion_out_bytes"] = tensor_bytes(node.meta.get("val"))
        node.meta["chrion_weight_bytes"] = (
            _weight_bytes(gm, node) if node.op == "call_function" else 0
        )
        node.meta["chrion_weights"] = [
            arg.target for arg in node.all_input_nodes if arg.op == "get_attr"
        ]
    return gm
