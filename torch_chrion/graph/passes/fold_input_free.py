"""Folds nodes that depend on no input and no weight into constants held by the GraphModule.

make_fx records ``aten.zeros(..., device=cpu)`` for a default initial state: a node pinned to the
device it was traced on. Shapes are static in the aten graph (one graph per input-shape bucket),
so such a chain is a constant; evaluating it once and holding the result as a get_attr constant
makes it travel with the weights to whichever device the node's lane is on. Constants folded
earlier (``_chrion_const_*``) fold again, so the per-layer slices that split_recurrent takes of
a folded initial state become constants too instead of tiny nodes to schedule.

Two kinds of input-free node must never fold, and are refused instead of folded wrongly:
- a value written in place (``zeros`` then ``add_``): the constant would carry each run's update
  into the next. capture functionalises such graphs first (functionalize.py), so only a graph
  that skipped that step meets this error;
- a random draw (an operator tagged ``nondeterministic_seeded``: rand, randn, randint, normal,
  bernoulli, ...): folding freezes one sample for every call, and keeping the node pins it to
  the tracing device. The model should draw from an input (``torch.randn_like(x)``, which stays a
  per-call node on whichever lane runs it) or take the noise as an input.
"""

from __future__ import annotations

import logging

import torch
from torch import fx

from ...errors import ModelError, UnsupportedOperatorError
from ..nodes import drop_unread_constants
from .functionalize import written_arguments

log = logging.getLogger(__name__)

PREFIX = "_chrion_const_"


def _is_data(node: fx.Node) -> bool:
    return node.op == "placeholder" or (
        node.op == "get_attr" and not str(node.target).startswith(PREFIX)
    )


def _fresh_name(gm: fx.GraphModule) -> str:
    index = 0
    while hasattr(gm, f"{PREFIX}{index}"):
        index += 1
    return f"{PREFIX}{index}"


def _is_random(node: fx.Node) -> bool:
    target = node.target
    return (
        isinstance(target, torch._ops.OpOverload)
        and torch.Tag.nondeterministic_seeded in target.tags
    )


def _refuse_unfoldable(node: fx.Node, depends: dict[fx.Node, bool]) -> None:
    if not depends[node] and _is_random(node):
        raise UnsupportedOperatorError(
            f"node {node.name} ({node.target}) draws random numbers from no input, so one "
            "captured graph would replay a single sample on every call. Draw from an input "
            "instead (e.g. torch.randn_like(x)) or pass the noise in as an input.",
            ops=[str(node.target)],
        )
    for written in written_arguments(node):
        if not depends[written]:
            raise ModelError(
                f"node {node.name} ({node.target}) writes in place into {written.name}, a value built from "
                "no input: folded to a constant it would carry every call's update into the "
                "next. Functionalise the graph first (capture does)."
            )


def fold_input_free(gm: fx.GraphModule) -> fx.GraphModule:
    """Replace each input- and weight-free call_function chain by one get_attr constant.

    Args:
        gm: an aten graph (modified in place).

    Returns:
        ``gm``, with the chains' consumers reading ``_chrion_const_<n>`` attributes, and the
        constants no node reads any more deleted.

    Raises:
        UnsupportedOperatorError: an input-free random draw (naming the node and operator).
        ModelError: an in-place write into an input-free value (the graph is not functional).
    """
    depends: dict[fx.Node, bool] = {}
    values: dict[fx.Node, object] = {}
    for node in gm.graph.nodes:
        depends[node] = (
            node.op == "output"
            or _is_data(node)
            or any(depends[arg] for arg in node.all_input_nodes)
        )
        _refuse_unfoldable(node, depends)
        if depends[node]:
            continue
        if node.op == "get_attr":
            values[node] = getattr(gm, node.target)
        elif node.op == "call_function":
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
            values[node] = node.target(*args, **kwargs)
    folded = 0
    for node, value in values.items():
        # Only a chain's last nodes (those read by data-dependent nodes) become constants.
        if node.op != "call_function" or not isinstance(value, torch.Tensor):
            continue
        if not any(depends[user] for user in node.users):
            continue
        name = _fresh_name(gm)
        folded += 1
        gm.register_buffer(name, value.clone())
        with gm.graph.inserting_before(node):
            constant = gm.graph.get_attr(name)
        node.replace_all_uses_with(constant)
    drop_unread_constants(gm, {b for b in gm._buffers if b.startswith(PREFIX)})
    gm.recompile()
    log.debug("fold_input_free: %d constants", folded)
    return gm
