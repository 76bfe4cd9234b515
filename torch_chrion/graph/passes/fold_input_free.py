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

A view of a constant weight (an ONNX initializer: an ``expand`` of an initial state to the batch,
the ``slice`` of it that split_recurrent gives each layer, a ``t`` of a matrix) is folded too,
but as a view: the attribute (``_chrion_weight_view_*``) shares the weight's storage and version
counter, so it follows in-place writes as the node did, and saving the graph keeps the sharing
(torch.save stores a storage once). Each such node was a step of its own per call: an ``expand``
traced at 3-8 us in the plans of the LSTM language model and the stacked LSTM. Views of an
``nn.Parameter`` stay nodes, as before: a parameter is what a user may rebind (``param.data =
other``), which a view taken once would never see (the captured graphs do not follow a rebound
parameter today either, but a view would make that permanent).
"""

from __future__ import annotations

import logging

import torch
from torch import fx

from ...errors import ModelError, UnsupportedOperatorError
from ..nodes import drop_unread_constants, fetch_attr, shares_storage
from .functionalize import written_arguments

log = logging.getLogger(__name__)

PREFIX = "_chrion_const_"
VIEW_PREFIX = "_chrion_weight_view_"


def _is_data(node: fx.Node) -> bool:
    return node.op == "placeholder" or (
        node.op == "get_attr" and not str(node.target).startswith(PREFIX)
    )


def _fresh_name(gm: fx.GraphModule, prefix: str) -> str:
    index = 0
    while hasattr(gm, f"{prefix}{index}"):
        index += 1
    return f"{prefix}{index}"


def _is_view(node: fx.Node) -> bool:
    target = node.target
    return isinstance(target, torch._ops.OpOverload) and target.is_view


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


def _weight_view(
    gm: fx.GraphModule,
    node: fx.Node,
    values: dict[fx.Node, object],
    views: dict[fx.Node, torch.Tensor],
) -> torch.Tensor | None:
    """The value of view op ``node`` when every node it reads is a weight, a constant or a
    weight's view: a view of the weight (detached: a view of a parameter that requires grad is
    no leaf, which the profiler's copy of the graph refuses), else None."""
    inputs: dict[fx.Node, object] = {}
    for arg in node.all_input_nodes:
        if arg in views:
            inputs[arg] = views[arg]
        elif arg in values:
            inputs[arg] = values[arg]
        elif arg.op == "get_attr":
            weight = fetch_attr(gm, arg.target)
            if isinstance(weight, torch.nn.Parameter):  # see the module's docstring
                return None
            inputs[arg] = weight.detach() if isinstance(weight, torch.Tensor) else weight
        else:
            return None
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: inputs[n])
    value = node.target(*args, **kwargs)
    return value if shares_storage(value, args) else None


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
    # views of weights (no input): node -> its value, a view sharing the weight's storage
    views: dict[fx.Node, torch.Tensor] = {}
    for node in gm.graph.nodes:
        depends[node] = (
            node.op == "output"
            or _is_data(node)
            or any(depends[arg] for arg in node.all_input_nodes)
        )
        _refuse_unfoldable(node, depends)
        if node.op == "call_function" and depends[node] and _is_view(node):
            view = _weight_view(gm, node, values, views)
            if view is not None:
                views[node] = view
        if depends[node]:
            continue
        if node.op == "get_attr":
            values[node] = getattr(gm, node.target)
        elif node.op == "call_function":
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
            values[node] = node.target(*args, **kwargs)
    folded = 0
    for node, value in [*values.items(), *views.items()]:
        # Only a chain's last nodes (those read by nodes that stay) become constants.
        if node.op != "call_function" or not isinstance(value, torch.Tensor):
            continue
        if not any(depends[user] and user not in views for user in node.users):
            continue
        view = node in views
        name = _fresh_name(gm, VIEW_PREFIX if view else PREFIX)
        folded += 1
        gm.register_buffer(name, value if view else value.clone())
        with gm.graph.inserting_before(node):
            constant = gm.graph.get_attr(name)
        node.replace_all_uses_with(constant)
    prefixes = (PREFIX, VIEW_PREFIX)
    drop_unread_constants(gm, {b for b in gm._buffers if b.startswith(prefixes)})
    gm.recompile()
    log.debug("fold_input_free: %d constants", folded)
    return gm
