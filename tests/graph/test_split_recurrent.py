"""split_recurrent: per-layer, per-direction, per-chunk pieces compute what the whole recurrent
operator (and eager nn.LSTM/GRU/RNN) computes, and each piece is one single-layer chrion call."""

import itertools

import pytest
import torch
from torch import nn

from torch_chrion.errors import OptionError
from torch_chrion.graph import capture, split_recurrent
from torch_chrion.graph.passes.split_recurrent import chunk_bounds

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
SEQ, BATCH, FEATURES, HIDDEN = 8, 2, 3, 4


class WithState(nn.Module):
    """Runs the layer from given initial states and returns output and every final state."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, h0, c0=None):
        if c0 is None:
            out, h = self.layer(x, h0)
            return out, h
        out, (h, c) = self.layer(x, (h0, c0))
        return out, h, c


class NoState(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        out, state = self.layer(x)
        return (out, *state) if isinstance(state, tuple) else (out, state)


# Each cell with 1-4 layers, uni- and bidirectional, every chunk count 1-8 twice per cell;
# initial states and batch_first alternate (the full product takes minutes on 2 cores).
GRID = [
    (cell, layers, bi, chunks, (layers + chunks) % 2 == 0, chunks % 3 == 0)
    for cell in CELLS
    for i, (layers, bi) in enumerate(itertools.product([1, 2, 3, 4], [False, True]))
    for chunks in (i + 1, (i + 4) % 8 + 1)
]


def build(cell, layers, bidirectional, with_state, batch_first):
    torch.manual_seed(layers * 10 + bidirectional)
    layer = CELLS[cell](
        FEATURES, HIDDEN, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first
    ).eval()
    x = torch.randn(BATCH, SEQ, FEATURES) if batch_first else torch.randn(SEQ, BATCH, FEATURES)
    if not with_state:
        return NoState(layer), (x,)
    states = [torch.randn(layers * (2 if bidirectional else 1), BATCH, HIDDEN)]
    if cell == "lstm":
        states.append(torch.randn_like(states[0]))
    return WithState(layer), (x, *states)


def pieces(gm):
    return [n for n in gm.graph.nodes if str(n.target).startswith("chrion.")]


@pytest.mark.parametrize(
    "cell,layers,bidirectional,chunks,with_state,batch_first",
    GRID,
    ids=[
        f"{c}-L{layers}-{'bi' if b else 'uni'}-K{k}-{'h0' if s else 'noh0'}-{'bf' if f else 'tf'}"
        for c, layers, b, k, s, f in GRID
    ],
)
def test_split_equals_whole(cell, layers, bidirectional, chunks, with_state, batch_first):
    model, inputs = build(cell, layers, bidirectional, with_state, batch_first)
    gm = capture(model, inputs, granularity="layer", seq_chunks=chunks)
    with torch.no_grad():
        expected = model(*inputs)
        got = gm(*inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    directions = 2 if bidirectional else 1
    split = pieces(gm)
    assert len(split) == layers * directions * chunks
    for node in split:
        args = dict(zip([a.name for a in node.target._schema.arguments], node.args, strict=True))
        assert (args["num_layers"], args["bidirectional"]) == (1, False)


def test_reverse_direction_runs_chunks_last_to_first():
    model, inputs = build("gru", 1, True, False, False)
    gm = capture(model, inputs, seq_chunks=3)
    names = [n.name for n in pieces(gm)]
    backward = [name for name in names if "_rev_" in name]
    assert backward == ["gru_l0_rev_c2", "gru_l0_rev_c1", "gru_l0_rev_c0"]


def test_layer_chunk_wavefront_dependencies():
    # piece (l, k) reads only (l-1, k) and (l, k-1): the wavefront the scheduler exploits
    model, inputs = build("lstm", 3, False, False, False)
    gm = capture(model, inputs, seq_chunks=4)
    by_name = {n.name: n for n in pieces(gm)}

    def producers(node):
        seen, stack, found = set(), list(node.all_input_nodes), set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.name in by_name:
                found.add(n.name)
            else:
                stack.extend(n.all_input_nodes)
        return found

    for layer, chunk in itertools.product(range(3), range(4)):
        expected = set()
        if layer:
            expected.add(f"lstm_l{layer - 1}_c{chunk}")
        if chunk:
            expected.add(f"lstm_l{layer}_c{chunk - 1}")
        assert producers(by_name[f"lstm_l{layer}_c{chunk}"]) == expected


def test_op_granularity_keeps_the_operator_whole():
    model, inputs = build("lstm", 3, True, True, False)
    gm = capture(model, inputs, granularity="op")
    (node,) = pieces(gm)
    assert node.args[5:7] == (3, True)  # lstm: ..., num_layers, bidirectional


@pytest.mark.parametrize(
    "batch, batch_first, whole",
    [(None, False, False), (1, False, False), (3, True, False), (4, False, True), (8, True, True)],
)
def test_auto_granularity_keeps_an_operator_over_a_batch_of_four_or_more_whole(
    batch, batch_first, whole
):
    torch.manual_seed(0)
    layer = nn.GRU(FEATURES, HIDDEN, num_layers=2, bidirectional=True, batch_first=batch_first)
    model = NoState(layer.eval())
    if batch is None:  # unbatched: (seq, features)
        x = torch.randn(SEQ, FEATURES)
    else:
        x = torch.randn(batch, SEQ, FEATURES) if batch_first else torch.randn(SEQ, batch, FEATURES)
    gm = capture(model, (x,), granularity="auto")
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)
    assert len(pieces(gm)) == (1 if whole else 4)


def test_split_pass_on_an_already_captured_graph():
    model, inputs = build("rnn", 2, True, True, True)
    gm = split_recurrent(capture(model, inputs, granularity="op"), seq_chunks=2)
    assert len(pieces(gm)) == 8
    with torch.no_grad():
        torch.testing.assert_close(gm(*inputs), model(*inputs), rtol=1e-5, atol=1e-6)
    assert all("val" in n.meta for n in gm.graph.nodes if n.op != "output")


def test_more_chunks_than_steps_gives_one_step_chunks():
    assert chunk_bounds(3, 8) == [(0, 1), (1, 2), (2, 3)]
    assert chunk_bounds(8, 3) == [(0, 3), (3, 6), (6, 8)]


def test_bad_granularity_options():
    model, inputs = build("gru", 1, False, False, False)
    with pytest.raises(OptionError, match="granularity"):
        capture(model, inputs, granularity="cell")
    with pytest.raises(OptionError, match="seq_chunks"):
        capture(model, inputs, seq_chunks=0)
    for whole in ("op", "auto"):
        with pytest.raises(OptionError, match="layer"):
            capture(model, inputs, granularity=whole, seq_chunks=2)
