"""Packed sequences, as chrion's Dynamo compilations trace them.

Note [Packed sequences]: ``pack_padded_sequence`` gives a PackedSequence whose data has
``sum(lengths)`` rows, a size read from the lengths' values, so Dynamo cannot trace it (nor
``pad_packed_sequence``, whose output length is ``max(lengths)``) and breaks the graph three
times around the recurrent layer, which then runs in eager. In chrion's compilations
(dynamo_calls.py) a PackedSequence stays padded instead: its ``data`` holds the padded input
flattened to (batch * steps, features), batch first (a 2-D tensor, as nn.GRU/nn.RNN check, and
row-wise operations on ``.data`` still mean the same), and its ``batch_sizes`` a PaddedBatch
holding the lengths. nn.LSTM/GRU/RNN.forward run unchanged on it, down to ``torch._VF.*``'s
packed overload, which is traced as ``packed_recurrent``:

- each layer and direction is one chrion operator call over the padded batch (a sequence's
  outputs before its length depend only on its own steps, so they are exact);
- the backward direction reverses each sequence within its length (a gather), runs forward,
  and reverses back;
- the final hidden state of each sequence is its output at step ``length - 1``;
- nn.LSTM's final cell state is no output of any step: ``chrion::lstm_packed_cell_state`` runs
  PyTorch's own packed LSTM for it, and is dropped from the graph when the model does not use
  it.

``pad_packed_sequence`` then sets the steps past each length to ``padding_value``. Lengths must
be between 1 and the padded length; without ``total_length`` the longest must equal the padded
length (the output length would otherwise depend on the lengths' values); and sorted when
``enforce_sorted``. Each is checked when the graph runs.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
from torch.nn.utils.rnn import PackedSequence

Tensor = torch.Tensor


class PaddedBatch(NamedTuple):
    """What a PackedSequence's ``batch_sizes`` holds in chrion's compilations."""

    max_batch_size: Any  # batch_sizes[0] in PyTorch: nn.RNNBase sizes its zero state by it
    steps: Any  # the padded length
    lengths: Tensor  # int64, one per sequence, in the batch's order
    device: torch.device  # PackedSequence checks that batch_sizes lives on the CPU


def _check(condition: Tensor, message: str) -> None:
    torch._assert_async(condition, message)


def pack_padded(
    input: Tensor, lengths: Any, batch_first: bool = False, enforce_sorted: bool = True
) -> PackedSequence:
    """``pack_padded_sequence`` in chrion's compilations: the batch stays padded, in its own
    order (no sorting, so ``sorted_indices`` is None)."""
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths, dtype=torch.int64)
    lengths = lengths.to(dtype=torch.int64)
    padded = input if batch_first else input.transpose(0, 1)
    batch, steps = padded.shape[0], padded.shape[1]
    _check(
        (lengths >= 1).all() & (lengths <= steps).all(),
        "pack_padded_sequence: every length must be between 1 and the padded length",
    )
    if enforce_sorted:
        _check(
            (lengths[:-1] >= lengths[1:]).all(),
            "pack_padded_sequence: lengths must be sorted in decreasing order with "
            "enforce_sorted=True (pass enforce_sorted=False for unsorted lengths)",
        )
    data = padded.reshape(batch * steps, *padded.shape[2:])
    lengths_on_input = lengths.to(input.device)
    return PackedSequence(
        data, PaddedBatch(batch, steps, lengths_on_input, torch.device("cpu")), None, None
    )


def pad_packed(
    sequence: PackedSequence,
    batch_first: bool = False,
    padding_value: float = 0.0,
    total_length: int | None = None,
) -> tuple[Tensor, Tensor]:
    """``pad_packed_sequence`` in chrion's compilations."""
    padded_batch = sequence.batch_sizes
    batch, steps, lengths = padded_batch[0], padded_batch[1], padded_batch[2]
    output = sequence.data.reshape(batch, steps, *sequence.data.shape[1:])
    valid = _valid_steps(lengths, output)
    output = torch.where(valid.reshape(batch, steps, 1), output, padding_value)
    if total_length is None:
        _check(
            lengths.max() == steps,
            "pad_packed_sequence: no sequence is as long as the padded input, so the output's "
            "length would depend on the lengths' values: pass total_length",
        )
    elif total_length >= steps:
        output = torch.nn.functional.pad(
            output, (0, 0, 0, total_length - steps), value=padding_value
        )
    else:
        _check(lengths.max() <= total_length, "pad_packed_sequence: a length > total_length")
        output = output[:, :total_length]
    if not batch_first:
        output = output.transpose(0, 1)
    return output, lengths.to("cpu")


def _valid_steps(lengths: Tensor, like: Tensor) -> Tensor:
    """(batch, steps) booleans: step t of sequence b is before its length. The step indices
    come from ``like``, so no factory is pinned to the tracing device."""
    steps = torch.ones_like(like[0, :, 0], dtype=torch.int64).cumsum(0) - 1
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def _gather_steps(values: Tensor, index: Tensor) -> Tensor:
    """values[b, index[b, t]] for (batch, steps, features) values."""
    return torch.gather(values, 1, index.unsqueeze(2).expand(-1, -1, values.shape[2]))


@functools.cache
def packed_recurrent(op: str) -> Any:
    """The traced replacement of ``torch._VF.<op>``'s packed overload on a PaddedBatch."""

    def call(
        data: Tensor,
        padded_batch: PaddedBatch,
        hx: Any,
        params: list[Tensor],
        has_biases: bool,
        num_layers: int,
        dropout: float,
        train: bool,
        bidirectional: bool,
    ) -> tuple[Tensor, ...]:
        batch, steps, lengths = padded_batch[0], padded_batch[1], padded_batch[2]
        # lengths outside [1, steps] fail pack_padded's check; clamped, they index no step
        # outside the batch, so that check is the error the call raises
        lengths = lengths.clamp(1, steps)
        x = padded = data.reshape(batch, steps, data.shape[1])
        h0, c0 = (hx[0], hx[1]) if op == "lstm" else (hx, None)
        valid = _valid_steps(lengths, x)
        steps_index = torch.ones_like(valid, dtype=torch.int64).cumsum(1) - 1
        reverse = torch.where(valid, lengths.unsqueeze(1) - 1 - steps_index, steps_index)
        last = (lengths - 1).unsqueeze(1)
        per = 4 if has_biases else 2
        directions = 2 if bidirectional else 1
        finals = []
        for layer in range(num_layers):
            outputs = []
            for direction in range(directions):
                k = layer * directions + direction
                weights = list(params[k * per : (k + 1) * per])
                run_on = x if direction == 0 else _gather_steps(x, reverse)
                state = (h0[k : k + 1],) + ((c0[k : k + 1],) if c0 is not None else ())
                y = _one_direction(op, run_on, state, weights, has_biases)
                finals.append(_gather_steps(y, last).squeeze(1))
                outputs.append(y if direction == 0 else _gather_steps(y, reverse))
            x = torch.cat(outputs, 2) if directions == 2 else outputs[0]
        output = x.reshape(batch * steps, x.shape[2])
        h_n = torch.stack(finals, 0)
        if op != "lstm":
            return output, h_n
        c_n = torch.ops.chrion.lstm_packed_cell_state(
            padded, lengths, h0, c0, list(params), has_biases, num_layers, bidirectional
        )
        return output, h_n, c_n

    return call


def _one_direction(
    op: str, x: Tensor, state: tuple[Tensor, ...], weights: list[Tensor], has_biases: bool
) -> Tensor:
    common = (weights, has_biases, 1, False, True, False)
    if op == "lstm":
        return torch.ops.chrion.lstm(x, state[0], state[1], *common)[0]
    if op == "gru":
        return torch.ops.chrion.gru(x, state[0], *common)[0]
    return torch.ops.chrion.rnn(x, state[0], *common, op.removeprefix("rnn_"))[0]
