"""Redirects PyTorch's recurrent functions to the ``chrion::`` operators while a model is traced.

``nn.LSTM/GRU/RNN.forward`` (and dynamo graphs that inlined them, or call ``torch.lstm``
directly) end in ``torch._VF.lstm / gru / rnn_tanh / rnn_relu``. Traced as they are, those
decompose on CPU into ``mkldnn_rnn_layer``, which cannot run on CUDA. A TorchFunctionMode sees the
call before it reaches the dispatcher and replaces it by the matching ``torch.ops.chrion`` op,
which make_fx keeps as one node. Intercepting at the function (rather than swapping modules)
covers modules, GraphModules and hand-written ``torch.lstm`` calls with one mechanism.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedOperatorError

Tensor = torch.Tensor


def _check_common(
    op: str, params: Sequence[Tensor], has_biases: bool, dropout: float, train: bool
) -> None:
    if train and dropout > 0:
        raise UnsupportedOperatorError(
            f"{op} with dropout={dropout} in training mode: torch_chrion serves inference; "
            "call model.eval() first",
            ops=[op],
        )
    per_layer = 4 if has_biases else 2
    if len(params) % per_layer:
        raise UnsupportedOperatorError(
            f"{op} with {len(params)} weight tensors (not a multiple of {per_layer}): "
            "projections (nn.LSTM proj_size) are not supported",
            ops=[op],
        )


def _check_not_packed(op: str, args: tuple) -> None:
    # The packed-sequence overloads take (data, batch_sizes, hx, params, ...): args[2] is a
    # state, not the weight list.
    if len(args) < 3 or not isinstance(args[2], (list, tuple)):
        raise UnsupportedOperatorError(
            f"{op} on a PackedSequence is not supported: pass padded tensors", ops=[op]
        )
    if (
        len(args) >= 3
        and isinstance(args[2], (list, tuple))
        and args[2]
        and not all(isinstance(p, Tensor) for p in args[2])
    ):
        raise UnsupportedOperatorError(f"{op} with non-tensor weights", ops=[op])


def _lstm(*args: Any) -> tuple[Tensor, Tensor, Tensor]:
    _check_not_packed("lstm", args)
    x, hx, params, has_biases, layers, dropout, train, bidirectional, batch_first = args
    _check_common("lstm", params, has_biases, dropout, train)
    if len(params) // (4 if has_biases else 2) != layers * (2 if bidirectional else 1):
        raise UnsupportedOperatorError(
            "lstm weights do not match its layers (nn.LSTM proj_size is not supported)",
            ops=["lstm"],
        )
    h0, c0 = hx
    return torch.ops.chrion.lstm(
        x, h0, c0, list(params), has_biases, layers, bidirectional, batch_first, False
    )


def _gru_like(op: str, nonlinearity: str | None) -> Callable[..., tuple[Tensor, Tensor]]:
    def call(*args: Any) -> tuple[Tensor, Tensor]:
        _check_not_packed(op, args)
        x, h0, params, has_biases, layers, dropout, train, bidirectional, batch_first = args
        _check_common(op, params, has_biases, dropout, train)
        common = (x, h0, list(params), has_biases, layers, bidirectional, batch_first, False)
        if nonlinearity is None:
            return torch.ops.chrion.gru(*common)
        return torch.ops.chrion.rnn(*common, nonlinearity)

    return call


_REPLACEMENTS: dict[Any, Callable[..., Any]] = {
    torch._VF.lstm: _lstm,
    torch._VF.gru: _gru_like("gru", None),
    torch._VF.rnn_tanh: _gru_like("rnn_tanh", "tanh"),
    torch._VF.rnn_relu: _gru_like("rnn_relu", "relu"),
}


def replacements() -> dict[Any, Callable[..., Any]]:
    """``torch._VF`` recurrent function -> the function calling its chrion operator (also what
    chrion's Dynamo compilations trace in their place: dynamo_calls.py)."""
    return _REPLACEMENTS


class RecurrentToChrion(TorchFunctionMode):
    """Inside this mode, ``torch.lstm/gru/rnn_tanh/rnn_relu`` call ``torch.ops.chrion.*``."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        replacement = _REPLACEMENTS.get(func)
        if replacement is not None:
            if kwargs:
                raise UnsupportedOperatorError(
                    f"{func.__name__} called with keyword arguments {sorted(kwargs)}",
                    ops=[func.__name__],
                )
            return replacement(*args)
        return func(*args, **kwargs)
