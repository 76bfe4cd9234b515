"""How chrion's Dynamo compilations trace recurrent calls.

Note [Recurrent calls in Dynamo]: Dynamo traces ``nn.LSTM/GRU/RNN.forward`` down to
``torch._VF.lstm / gru / rnn_tanh / rnn_relu`` and runs each call on fake tensors to learn its
output. For ``gru`` and ``rnn_*`` (and ``lstm`` off CPU) PyTorch's fake run is its Python
decomposition, which loops over the time steps: iterating a tensor whose length is symbolic
fixes the length, so every new length would recompile. In a chrion compilation those calls are
traced as the ``chrion::`` operators instead (graph/recurrent_calls.py), whose fake kernels
give the output shape for any length; only chrion's capture would have turned them into those
operators anyway. Anything else (training mode, a call these rules do not cover) is traced as
Dynamo traces it by default.

The rule is an entry of Dynamo's by-identity dispatch table (``VariableBuilder._id_dispatch``),
added by chrion's compile-start callback and removed by its compile-end callback (dynamo.py):
Dynamo compiles frames one at a time under its ``compile_lock``, so no other compilation sees
it, and the rule itself answers with Dynamo's default on any thread but the compiling one.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch

_rules = threading.local()

# where ``train`` is among the arguments of torch.lstm/gru/rnn_*'s padded overload
_TRAIN_PADDED = 6


@functools.cache
def _dynamo_api() -> tuple[Any, Any, Any] | None:
    """Dynamo's by-identity dispatch table and the classes the rule builds on; None (warned)
    where this torch lays them out otherwise."""
    try:
        from torch._dynamo.variables.base import VariableTracker
        from torch._dynamo.variables.builder import VariableBuilder
        from torch._dynamo.variables.torch import TorchInGraphFunctionVariable

        return VariableBuilder._id_dispatch(), TorchInGraphFunctionVariable, VariableTracker
    except (ImportError, AttributeError) as exc:
        warnings.warn(
            f"torch_chrion: torch {torch.__version__} has no Dynamo dispatch table as 2.14 has "
            f"({exc}); nn.GRU/nn.RNN lengths are fixed by Dynamo, one graph per length",
            stacklevel=2,
        )
        return None


def _padded_inference_call(args: list[Any], kwargs: dict[str, Any]) -> bool:
    """Whether Dynamo's arguments are the padded overload (a weight list third) in inference
    (``train`` a constant False): what the chrion operators compute."""
    if kwargs or len(args) != 9:
        return False
    if args[2].python_type() not in (list, tuple):
        return False
    train = args[_TRAIN_PADDED]
    return train.is_python_constant() and train.as_python_constant() is False


@functools.cache
def _rule() -> Callable[[Any, Any], Any] | None:
    """The dispatch-table entry for each recurrent function: chrion's rule on the compiling
    thread, Dynamo's default (a function put in the graph as it is) on any other."""
    from .graph.recurrent_calls import replacements

    api = _dynamo_api()
    if api is None:
        return None
    _, in_graph, variable_tracker = api

    class RecurrentCallVariable(in_graph):  # type: ignore[misc, valid-type]
        """``torch.lstm/gru/rnn_*`` in a chrion compilation: traced as the chrion operator."""

        def call_function(self, tx: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
            if _padded_inference_call(args, kwargs):
                replacement = variable_tracker.build(tx, replacements()[self.value])
                return tx.inline_user_function_return(replacement, list(args), {})
            return super().call_function(tx, args, kwargs)

    def rule(builder: Any, value: Any) -> Any:
        compiling_here = getattr(_rules, "owner", None) == threading.get_ident()
        kind = RecurrentCallVariable if compiling_here else in_graph
        return kind.create_with_source(value, source=builder.source)

    return rule


def install() -> None:
    """Trace recurrent calls as chrion operators in the compilation starting on this thread
    (Note [Recurrent calls in Dynamo]); ``uninstall()`` ends it."""
    from .graph.recurrent_calls import replacements
    from .ops import ensure_loaded

    ensure_loaded()  # the operators the rule traces
    api, rule = _dynamo_api(), _rule()
    if api is None or rule is None:
        return
    table = api[0]
    added = [id(fn) for fn in replacements() if id(fn) not in table]
    for key in added:
        table[key] = rule
    _rules.owner = threading.get_ident()
    _rules.__dict__.setdefault("added", []).append((table, added, rule))


def uninstall() -> None:
    stack = _rules.__dict__.get("added")
    if not stack:
        return
    table, added, rule = stack.pop()
    for key in added:
        if table.get(key) is rule:
            del table[key]
    if not stack:
        _rules.owner = None
