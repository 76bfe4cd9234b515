"""How chrion's Dynamo compilations trace recurrent calls and packed sequences.

Note [Recurrent calls in Dynamo]: Dynamo traces ``nn.LSTM/GRU/RNN.forward`` down to
``torch._VF.lstm / gru / rnn_tanh / rnn_relu`` and runs each call on fake tensors to learn its
output. For ``gru`` and ``rnn_*`` (and ``lstm`` off CPU) PyTorch's fake run is its Python
decomposition, which loops over the time steps: iterating a tensor whose length is symbolic
fixes the length, so every new length would recompile. In a chrion compilation those calls are
traced as the ``chrion::`` operators instead (graph/recurrent_calls.py), whose fake kernels
give the output shape for any length; only chrion's capture would have turned them into those
operators anyway. Anything else (training mode, a call these rules do not cover) is traced as
Dynamo traces it by default. The same rules trace packed sequences padded (Note [Packed
sequences] in graph/packed_sequences.py): ``pack_padded_sequence`` and ``pad_packed_sequence``
are traced as that module's versions, and ``torch._VF.*``'s packed overload on them as
``packed_recurrent``.

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

from .errors import ModelError

_rules = threading.local()


@functools.cache
def _dynamo_api() -> tuple[Any, ...] | None:
    """Dynamo's by-identity dispatch table and the classes the rules build on; None (warned)
    where this torch lays them out otherwise."""
    try:
        from torch._dynamo import trace_rules
        from torch._dynamo.variables.base import VariableTracker
        from torch._dynamo.variables.builder import VariableBuilder
        from torch._dynamo.variables.functions import UserFunctionVariable
        from torch._dynamo.variables.torch import TorchInGraphFunctionVariable

        return (
            VariableBuilder._id_dispatch(),
            TorchInGraphFunctionVariable,
            UserFunctionVariable,
            VariableTracker,
            trace_rules,
        )
    except (ImportError, AttributeError) as exc:
        warnings.warn(
            f"torch_chrion: torch {torch.__version__} has no Dynamo dispatch table as 2.14 has "
            f"({exc}); nn.GRU/nn.RNN lengths are fixed by Dynamo (one graph per length), and "
            "packed sequences break the graph",
            stacklevel=2,
        )
        return None


def _inference_call(args: list[Any], kwargs: dict[str, Any], train_at: int) -> bool:
    if kwargs or len(args) != 9:
        return False
    train = args[train_at]
    return train.is_python_constant() and train.as_python_constant() is False


def _padded_inference_call(args: list[Any], kwargs: dict[str, Any]) -> bool:
    """Whether Dynamo's arguments are the padded overload (a weight list third) in inference
    (``train`` a constant False): what the chrion operators compute."""
    return _inference_call(args, kwargs, 6) and args[2].python_type() in (list, tuple)


def _packed_call(args: list[Any], kwargs: dict[str, Any]) -> bool:
    """Whether Dynamo's arguments are the packed overload on a padded PackedSequence (Note
    [Packed sequences]); raises if not in inference, which only PyTorch's packed rows serve.

    Raises:
        ModelError: the recurrent layer is in training mode.
    """
    from .graph.packed_sequences import PaddedBatch

    if len(args) < 2 or args[1].python_type() is not PaddedBatch:
        return False
    if not _inference_call(args, kwargs, 7):
        raise ModelError(
            "a recurrent layer over a packed sequence is in training mode: torch_chrion "
            "serves inference; call model.eval() before calling the compiled model, or compile "
            "with another backend for training"
        )
    return True


def _packing() -> dict[Any, Any]:
    """The functions that pack and unpack sequences -> what chrion's compilations trace in
    their place (Note [Packed sequences])."""
    from torch.nn.utils import rnn

    from .graph import packed_sequences

    return {
        rnn.pack_padded_sequence: packed_sequences.pack_padded,
        rnn.pad_packed_sequence: packed_sequences.pad_packed,
    }


@functools.cache
def _rule() -> Callable[[Any, Any], Any] | None:
    """The dispatch-table entry of each recurrent and packing function: chrion's rule on the
    compiling thread, Dynamo's default on any other."""
    from .graph.packed_sequences import packed_recurrent
    from .graph.recurrent_calls import replacements

    api = _dynamo_api()
    if api is None:
        return None
    _, in_graph, user_function, variable_tracker, trace_rules = api

    def inline(tx: Any, function: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        return tx.inline_user_function_return(
            variable_tracker.build(tx, function), list(args), dict(kwargs)
        )

    class RecurrentCallVariable(in_graph):  # type: ignore[misc, valid-type]
        """``torch.lstm/gru/rnn_*`` in a chrion compilation: traced as the chrion operator."""

        def call_function(self, tx: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
            if _padded_inference_call(args, kwargs):
                return inline(tx, replacements()[self.value], args, {})
            if _packed_call(args, kwargs):
                return inline(tx, packed_recurrent(self.value.__name__), args, {})
            return super().call_function(tx, args, kwargs)

    class ReplacedFunctionVariable(user_function):  # type: ignore[misc, valid-type]
        """``pack_padded_sequence`` / ``pad_packed_sequence`` in a chrion compilation."""

        def call_function(self, tx: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
            return inline(tx, _packing()[self.fn], args, kwargs)

    def rule(builder: Any, value: Any) -> Any:
        if getattr(_rules, "owner", None) != threading.get_ident():
            kind = trace_rules.lookup(value)
        elif value in replacements():
            kind = RecurrentCallVariable
        else:
            kind = ReplacedFunctionVariable
        return kind.create_with_source(value, source=builder.source)

    return rule


def install() -> None:
    """Trace recurrent calls as chrion operators, and packed sequences padded, in the
    compilation starting on this thread (Notes [Recurrent calls in Dynamo], [Packed
    sequences]); ``uninstall()`` ends it."""
    from .graph.recurrent_calls import replacements
    from .ops import ensure_loaded

    ensure_loaded()  # the operators the rules trace
    api, rule = _dynamo_api(), _rule()
    if api is None or rule is None:
        return
    table = api[0]
    functions = [*replacements(), *_packing()]
    added = [id(fn) for fn in functions if id(fn) not in table]
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
