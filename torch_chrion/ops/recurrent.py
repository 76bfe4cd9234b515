"""Fake (shape-only) kernels of chrion::lstm / gru / rnn; the real kernels are in
csrc/kernels/recurrent.cpp.

Schemas (mirroring aten.lstm/gru/rnn_* with dropout and train removed, plus ``reverse``):

    lstm(input, h0, c0, params, has_biases, num_layers, bidirectional, batch_first, reverse)
        -> (output, h_n, c_n)
    gru(input, h0, params, has_biases, num_layers, bidirectional, batch_first, reverse)
        -> (output, h_n)
    rnn(input, h0, params, has_biases, num_layers, bidirectional, batch_first, reverse,
        nonlinearity) -> (output, h_n)

``params`` is PyTorch's flat weight list (w_ih, w_hh[, b_ih, b_hh] per layer and direction) and
``h0`` / ``c0`` have shape (num_layers * num_directions, batch, hidden). ``reverse`` runs a single
direction backwards in time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from .._extension import load


def _check_input_size(input: torch.Tensor, params: list[torch.Tensor]) -> None:
    # ties the input's feature size to the first layer's weights, so that torch.export (with
    # dynamic shapes) knows it is fixed, as PyTorch's own recurrent kernels tell it
    torch._check(
        input.shape[-1] == params[0].shape[1],
        lambda: f"input has {input.shape[-1]} features, the weights take {params[0].shape[1]}",
    )


def _output(input: torch.Tensor, h0: torch.Tensor, bidirectional: bool) -> torch.Tensor:
    hidden = h0.shape[-1] * (2 if bidirectional else 1)
    if input.dim() == 2:  # unbatched
        return input.new_empty((input.shape[0], hidden))
    # contiguous in either layout, as every device's kernel returns it (csrc/kernels)
    return input.new_empty((*input.shape[:2], hidden))


def _fake_kernel(states: int) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The fake kernel of the op whose ``states`` state inputs (LSTM: h0, c0; GRU and RNN: h0)
    follow ``input``: (output, *final states), each state shaped as its initial value."""

    def fake(input: torch.Tensor, *args: Any) -> tuple[torch.Tensor, ...]:
        initial, params = args[:states], args[states]
        bidirectional = args[states + 3]  # after params, has_biases, num_layers
        _check_input_size(input, params)
        return (_output(input, initial[0], bidirectional), *map(torch.empty_like, initial))

    return fake


@functools.cache
def ensure_loaded() -> None:
    """Load the chrion:: kernels and register their fake kernels (once per process)."""
    load("kernels")
    torch.library.register_fake("chrion::lstm", _fake_kernel(states=2))
    torch.library.register_fake("chrion::gru", _fake_kernel(states=1))
    torch.library.register_fake("chrion::rnn", _fake_kernel(states=1))
