"""``chrion::lstm_packed_cell_state``: the final cell state of nn.LSTM over a padded batch with
per-sequence lengths, the one output of a packed LSTM that no step's output holds (Note [Packed
sequences] in graph/packed_sequences.py). It runs PyTorch's own packed LSTM, so it is exact to
eager; graphs that do not use the cell state drop it.

    lstm_packed_cell_state(input, lengths, h0, c0, params, has_biases, num_layers,
                           bidirectional) -> c_n

``input`` is batch first (batch, steps, features), ``lengths`` one int64 per sequence in the
batch's order, ``h0`` / ``c0`` (num_layers * num_directions, batch, hidden).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.nn.utils.rnn import pack_padded_sequence

Tensor = torch.Tensor


def _cell_state(
    input: Tensor,
    lengths: Tensor,
    h0: Tensor,
    c0: Tensor,
    params: list[Tensor],
    has_biases: bool,
    num_layers: int,
    bidirectional: bool,
) -> Tensor:
    packed = pack_padded_sequence(input, lengths.cpu(), batch_first=True, enforce_sorted=False)
    order = packed.sorted_indices
    state = (h0.index_select(1, order), c0.index_select(1, order))
    _, _, c_n = torch._VF.lstm(
        packed.data,
        packed.batch_sizes,
        state,
        params,
        has_biases,
        num_layers,
        0.0,
        False,
        bidirectional,
    )
    return c_n.index_select(1, packed.unsorted_indices)


def _cell_state_fake(input: Tensor, lengths: Tensor, h0: Tensor, c0: Tensor, *args: Any) -> Tensor:
    """The fake kernel: c_n is shaped as c0 (the arguments after it do not change that)."""
    return torch.empty_like(c0)


@functools.cache
def register_operator() -> None:
    """Define ``chrion::lstm_packed_cell_state`` and its fake kernel (once per process)."""
    op = torch.library.custom_op(
        "chrion::lstm_packed_cell_state",
        _cell_state,
        mutates_args=(),
        schema="(Tensor input, Tensor lengths, Tensor h0, Tensor c0, Tensor[] params, "
        "bool has_biases, int num_layers, bool bidirectional) -> Tensor",
    )
    op.register_fake(_cell_state_fake)
