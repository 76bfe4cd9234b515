"""Inference batch norm folded into the convolution before it.

An eval-mode ``BatchNorm`` after a convolution is an affine map per output channel, so it can be
computed by the convolution itself: weight * gamma / sqrt(var + eps) and a bias to match
(``torch.nn.utils.fusion.fuse_conv_bn_weights``). The batch norm's pass over the activation (a
read and a write of the whole tensor, 0.2-0.3 ms per layer of the CRDNN speech model on one core
of the benchmark VM) is gone, and so is one node's executor step. The result differs from the
unfolded graph by rounding only (a few ulp of the activations).

Folded when: the batch norm is in inference mode, reads the convolution's output, which nothing
else reads, and every weight, bias and running statistic of both is a constant of the graph. The
folded weight and bias are new tensors: the model's own are never written. They are derived
weights (graph/derived_weights.py): written into again when the model's weights change after
capture (load_state_dict), before the next call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..derived_weights import derived_weight
from ..nodes import (
    drop_unread_constants,
    fetch_attr,
    reads_only_first_output,
    replace_first_output,
)

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


def _folded_constants(gm: fx.GraphModule, norm: fx.Node) -> list | None:
    """The constants a foldable ``norm`` folds (conv weight and bias, then the norm's weight,
    bias, running mean and variance; None where absent), or None when it cannot be folded."""
    if norm.target is _ANY_MODE and norm.args[5]:
        return None  # training mode: batch statistics, nothing to fold
    conv = norm.args[0]
    if not isinstance(conv, fx.Node) or conv.target is not aten.convolution.default:
        return None
    if len(conv.users) != 1 or conv.args[6]:  # read elsewhere, or transposed
        return None
    if not reads_only_first_output(norm):
        return None  # the saved statistics are read
    weights = [_constant(gm, a) for a in (conv.args[1], conv.args[2], *norm.args[1:5])]
    if any(w is False for w in weights) or weights[0] is None or weights[4] is None:
        return None
    return weights if all(w is None or w.is_floating_point() for w in weights) else None


def _folded(constants: list, eps: float, part: int) -> Callable[..., torch.Tensor]:
    """The function of the present constants (the absent, None, left out) that gives the folded
    weight (part 0) or bias (part 1) in the convolution weight's dtype."""
    present = [c is not None for c in constants]

    def derive(*tensors: torch.Tensor) -> torch.Tensor:
        given = iter(tensors)
        conv_w, conv_b, gamma, beta, mean, var = (next(given) if p else None for p in present)
        folded = fuse_conv_bn_weights(conv_w, conv_b, mean, var, eps, gamma, beta)[part]
        return folded.detach().to(conv_w.dtype)

    return derive


def fold_batch_norm(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every foldable inference batch norm of ``gm`` into its convolution (in place)."""
    graph = gm.graph
    replaced: set[str] = set()  # targets of the constants folded away
    for norm in list(graph.nodes):
        if norm.target not in (_INFERENCE, _ANY_MODE):
            continue
        constants = _folded_constants(gm, norm)
        if constants is None:
            continue
        conv = norm.args[0]
        folded = []
        sources = [c for c in constants if c is not None]
        for part in (0, 1):  # the folded weight, then its bias
            name = f"{PREFIX}{conv.name}_{('weight', 'bias')[part]}"
            derive = _folded(constants, norm.args[-1], part)
            gm.register_buffer(name, derived_weight(derive, sources))
            with graph.inserting_before(conv):
                folded.append(graph.get_attr(name))
        originals = (conv.args[1], conv.args[2], *norm.args[1:5])
        replaced |= {str(a.target) for a in originals if a is not None}
        conv.args = (conv.args[0], *folded, *conv.args[3:])
        replace_first_output(graph, norm, conv)
    if replaced:
        drop_unread_constants(gm, replaced)
        gm.recompile()
    return gm
