"""Folds nodes that depend on no input and no weight into constants held by the GraphModule.

make_fx records ``aten.zeros(..., device=cpu)`` for a default initial state: a node pinned to the
device it was traced on. Shapes are static in the aten graph (one graph per input-shape bucket),
so such a chain is a constant; evaluating it once and holding the result as a get_attr constant
makes it travel with the weights to whichever device the node's lane is on.
"""

from __future__ import annotations

import logging

import torch
from torch import fx

log = logging.getLogger(__name__)


def _depends_on_data(node: fx.Node, memo: dict[fx.Node, bool]) -> bool:
    if node.op in ("placeholder", "get_attr"):
        return True
    return any(memo[arg] for arg in node.all_input_nodes)


def fold_input_free(gm: fx.GraphModule) -> fx.GraphModule:
    """Replace each input- and weight-free call_function chain by one get_attr constant.

    Args:
        gm: an aten graph (modified in place).

    Returns:
        ``gm``, with the chains' consumers reading ``_chrion_const_<n>`` attributes.
    """
    depends: dict[fx.Node, bool] = {}
    values: dict[fx.Node, object] = {}
    for node in gm.graph.nodes:
        depends[node] = node.op == "output" or _depends_on_data(node, depends)
        if not depends[node] and node.op == "call_function":
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
            values[node] = node.target(*args, **kwargs)
    folded = 0
    for node, value in values.items():
        # Only a chain's last nodes (those read by data-dependent nodes) become constants.
        if not isinstance(value, torch.Tensor) or not any(depends[u] for u in node.users):
            continue
        name = f"_chrion_const_{folded}"
        folded += 1
        gm.register_buffer(name, value.clone())
        with gm.graph.inserting_before(node):
            constant = gm.graph.get_attr(name)
        node.replace_all_uses_with(constant)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    log.debug("fold_input_free: %d constants", folded)
    return gm
