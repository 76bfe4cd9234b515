"""Re-traces an aten graph that mutates tensors in place into one that does not.

A model may build a value from no input and then update it in place: a ``torch.zeros``
accumulator with ``+=``, an ``arange`` window with ``clamp_``. make_fx records the factory call and
the in-place op on it; ``fold_input_free`` would then turn the factory call into a constant that
the in-place op rewrites on every run (profiling runs included), so every call would start from
the previous call's result. ``torch.func.functionalize`` replaces each mutation by its
out-of-place form, after which the whole input-free chain (in-place steps included) is an
ordinary value that folds once, and a data-dependent update is a per-call computation.

The first trace cannot be functionalised itself: onnx2torch modules read shape tensors as Python
values while tracing, which functional wrappers do not allow. Its result is plain aten, so this
second trace is where functionalisation happens, and only for graphs that mutate something.

Writes into tensors the model holds (``self.count.add_(1)`` on a buffer) cannot be made
functional: they are state carried from call to call, and every profiling run would advance it
too. Such a graph is refused, naming the tensor; the state belongs in the inputs and outputs.
"""

from __future__ import annotations

import logging

import torch
from torch import fx
from torch.func import functionalize
from torch.fx.experimental.proxy_tensor import make_fx

from ...errors import UnsupportedOperatorError

log = logging.getLogger(__name__)


def written_arguments(node: fx.Node) -> list[fx.Node]:
    """The nodes ``node`` writes into: the arguments its schema marks ``Tensor(a!)``."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return []
    written: list[object] = []
    for index, argument in enumerate(node.target._schema.arguments):
        if argument.alias_info is None or not argument.alias_info.is_write:
            continue
        value = node.args[index] if index < len(node.args) else node.kwargs.get(argument.name)
        written += value if isinstance(value, (list, tuple)) else [value]
    return [v for v in written if isinstance(v, fx.Node)]


def functionalize_mutations(gm: fx.GraphModule, example_inputs: tuple) -> fx.GraphModule:
    """``gm`` with every in-place update replaced by its out-of-place form.

    Writes into the graph's inputs stay (as one ``copy_`` each at the end), as the model made
    them; writes into values the graph created become new values.

    Args:
        gm: a traced aten graph (real tensors; runs once on ``example_inputs``).
        example_inputs: the inputs it was traced with.

    Returns:
        ``gm`` itself when no node mutates anything, else a new GraphModule (same placeholders
        and outputs) holding the same weights.

    Raises:
        UnsupportedOperatorError: the graph writes into a tensor the model holds.
    """
    mutating = [n for n in gm.graph.nodes if written_arguments(n)]
    if not mutating:
        return gm
    # clones: a model that writes into its inputs must not write into the caller's twice
    inputs = tuple(x.clone() for x in example_inputs)
    with torch.no_grad():
        functional = make_fx(functionalize(gm), tracing_mode="real")(*inputs)
    _refuse_state_writes(functional)
    log.debug("functionalize_mutations: %d in-place nodes rewritten", len(mutating))
    return functional


def _refuse_state_writes(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        for written in written_arguments(node):
            if written.op == "get_attr":
                tensor = getattr(gm, written.target)
                raise UnsupportedOperatorError(
                    f"node {node.name} ({node.target}) writes in place into a tensor the model "
                    f"holds (a buffer or parameter of shape {tuple(tensor.shape)}): state kept "
                    "from call to call is not supported, and every profiling run would advance "
                    "it. Pass the state in as an input and return the new state instead.",
                    ops=[str(node.target)],
                )
