"""Inference batch norm folded into the convolution before it.

An eval-mode ``BatchNorm`` after a convolution is an affine map per output channel, so it can be
computed by the convolution itself: weight * gamma / sqrt(var + eps) and a bias to match
(``torch.nn.utils.fusion.fuse_conv_bn_weights``). The batch norm's pass over the activation (a
read and a write of the whole tensor, 0.2-0.3 ms per layer of the CRDNN speech model on one core
of the benchmark VM) is gone, and so is one node's executor step. The result differs from the
unfolded graph by rounding only (a few ulp of the activations).

Folded when: the batch norm is in inference mode, reads the convolution's output, which nothing
else reads, and every weight, bias and running statistic of both is a constant of the graph. The
folded weight and bias are new tensors: the model's own are never written.
"""

from __future__ import annotations

import operator

import torch
from torch import fx
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..nodes import fetch_attr

aten = torch.ops.aten

PREFIX = "_chrion_bn_folded_"

# batch norm overloads: (input, weight, bias, running_mean, running_var, *rest); eps is last
_INFERENCE = aten._native_batch_norm_legit_no_training.default
_ANY_MODE = aten.native_batch_norm.default  # (..., training, momentum, eps)


def _constant(gm: fx.GraphModule, arg: object) -> torch.Tensor | None | bool:
    """The tensor a get_attr argument reads, None for a None argument, False otherwise."""
    if arg is None:
        return None
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        value = fetch_attr(gm, str(arg.target))
        return value if isinstance(value, torch.Tensor) else False
    return False


def _foldable(gm: fx.GraphModule, norm: fx.Node) -> bool:
    if norm.target is _ANY_MODE and norm.args[5]:
        return False  # training mode: batch statistics, nothing to fold
    conv = norm.args[0]
    if not isinstance(conv, fx.Node) or conv.target is not aten.convolution.default:
        return False
    if len(conv.users) != 1 or conv.args[6]:  # read elsewhere, or transposed
        return False
    if any(u.target is not operator.getitem or (u.args[1] != 0 and u.users) for u in norm.users):
        return False  # the saved statistics are read
    weights = [_constant(gm, a) for a in (conv.args[1], conv.args[2], *norm.args[1:5])]
    if any(w is False for w in weights) or weights[0] is None or weights[4] is None:
        return False
    return all(w is None or w.is_floating_point() for w in weights)


def fold_batch_norm(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every foldable inference batch norm of ``gm`` into its convolution (in place)."""
    graph = gm.graph
    replaced: set[str] = set()  # targets of the constants folded away
    for norm in list(graph.nodes):
        if norm.target not in (_INFERENCE, _ANY_MODE) or not _foldable(gm, norm):
            continue
        conv = norm.args[0]
        conv_w, conv_b, gamma, beta, mean, var = (
            _constant(gm, a) for a in (conv.args[1], conv.args[2], *norm.args[1:5])
        )
        weight, bias = fuse_conv_bn_weights(conv_w, conv_b, mean, var, norm.args[-1], gamma, beta)
        folded = []
        for part, tensor in (("weight", weight), ("bias", bias)):
            name = f"{PREFIX}{conv.name}_{part}"
            gm.register_buffer(name, tensor.detach().to(conv_w.dtype))
            with graph.inserting_before(conv):
                folded.append(graph.get_attr(name))
        originals = (conv.args[1], conv.args[2], *norm.args[1:5])
        replaced |= {str(a.target) for a in originals if a is not None}
        conv.args = (conv.args[0], *folded, *conv.args[3:])
        for user in list(norm.users):
            if user.args[1] == 0:
                user.replace_all_uses_with(conv)
            graph.erase_node(user)
        graph.erase_node(norm)
    if replaced:
        graph.eliminate_dead_code()
        read = {n.target for n in graph.nodes if n.op == "get_attr"}
        for name in replaced - read:
            if "." not in name:
                delattr(gm, name)
        gm.recompile()
    return gm
