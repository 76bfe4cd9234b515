"""Hands every recurrent operator its recurrent weights (W_hh) in bfloat16, for
``recurrent_dtype="bfloat16"``.

chrion's CPU kernel runs a layer whose W_hh is bfloat16 with half the weight bytes per time step
(Note [bf16 recurrent weights] in csrc/kernels/recurrent_cpu_impl.h); PyTorch's kernels (a CUDA
lane) take the same rounded weights widened back. A weight read from the module becomes a
bfloat16 copy held by the GraphModule, converted once here (the kernel packs it once, keyed by
that tensor); one computed in the graph gets a conversion node.
"""

from __future__ import annotations

import torch
from torch import fx

from ..derived_weights import derived_weight
from ..nodes import drop_unread_constants, fetch_attr
from .split_recurrent import _recurrent_ops

PREFIX = "_chrion_bf16_"


def _bfloat16_copy(weight: torch.Tensor) -> torch.Tensor:
    return weight.to(torch.bfloat16)


def _bfloat16(gm: fx.GraphModule, weight: fx.Node, before: fx.Node) -> fx.Node:
    with gm.graph.inserting_before(before):
        if weight.op != "get_attr":
            return gm.graph.call_function(
                torch.ops.aten._to_copy.default, (weight,), {"dtype": torch.bfloat16}
            )
        name = PREFIX + str(weight.target).replace(".", "_")
        if not hasattr(gm, name):
            source = fetch_attr(gm, str(weight.target))
            gm.register_buffer(name, derived_weight(_bfloat16_copy, [source]))
        return gm.graph.get_attr(name)


def bf16_recurrent_weights(gm: fx.GraphModule) -> fx.GraphModule:
    """Replace the W_hh of each ``chrion.lstm/gru/rnn`` node of ``gm`` by a bfloat16 one (in
    place); the float32 weights no node reads any more are dropped."""
    states = _recurrent_ops()
    replaced: set[str] = set()
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in states:
            continue
        position = 1 + states[node.target]  # params follow the input and the initial states
        has_biases = node.args[position + 1]
        params = list(node.args[position])
        for i in range(1, len(params), 4 if has_biases else 2):
            if params[i].op == "get_attr" and str(params[i].target).startswith(PREFIX):
                continue  # converted already
            if params[i].op == "get_attr":
                replaced.add(params[i].target)
            params[i] = _bfloat16(gm, params[i], node)
        node.args = (*node.args[:position], params, *node.args[position + 1 :])
    drop_unread_constants(gm, replaced)
    gm.recompile()
    return gm
