"""causal_time_axes: a graph is called causal in time only when it is, by brute force on eager
PyTorch (changing the input from step k on leaves every output step before k unchanged), and
the unidirectional recurrent models a server pads are recognised."""

import pytest
import torch
from torch import nn

from torch_chrion.graph import capture
from torch_chrion.graph.time_causal import causal_time_axes

FEATURES, STEPS = 6, 10


class Recurrent(nn.Module):
    """A recurrent layer, a per-frame head, and one optional step that mixes time."""

    def __init__(self, kind="LSTM", bidirectional=False, batch_first=False, mix=None):
        super().__init__()
        self.rnn = getattr(nn, kind)(
            FEATURES, 8, bidirectional=bidirectional, batch_first=batch_first
        )
        self.head = nn.Linear(16 if bidirectional else 8, 4)
        self.conv = nn.Conv1d(FEATURES, FEATURES, 3, padding=1)
        self.time = 1 if batch_first else 0
        self.mix = mix

    def forward(self, x):
        if self.mix == "conv":  # a centred convolution sees the next frame
            x = self.conv(x.permute(1, 2, 0)).permute(2, 0, 1)
        y, h = self.rnn(x)
        if self.mix == "final_state":
            return self.head(y).log_softmax(-1), h
        if self.mix == "mean":
            y = y - y.mean(self.time, keepdim=True)
        if self.mix == "softmax_over_time":
            return self.head(y).softmax(self.time)
        if self.mix == "flip":
            y = y.flip(self.time)
        return self.head(y).log_softmax(-1)


def inputs(model):
    shape = (2, STEPS, FEATURES) if model.time == 1 else (STEPS, 2, FEATURES)
    return (torch.randn(shape, generator=torch.Generator().manual_seed(0)),)


def causal_by_brute_force(model, x) -> bool:
    """Every output keeps its steps before k when the input changes from step k on."""
    with torch.no_grad():
        base = torch.utils._pytree.tree_leaves(model(x))
        for k in (1, STEPS // 2, STEPS - 1):
            changed = x.clone()
            changed.narrow(model.time, k, STEPS - k).normal_()
            now = torch.utils._pytree.tree_leaves(model(changed))
            for before, after in zip(base, now, strict=True):
                if before.shape[model.time] != STEPS:  # no time axis: must not change at all
                    if not torch.equal(before, after):
                        return False
                elif not torch.equal(
                    before.narrow(model.time, 0, k), after.narrow(model.time, 0, k)
                ):
                    return False
    return True


CASES = {
    "lstm": (Recurrent(), [0]),
    "gru_batch_first": (Recurrent("GRU", batch_first=True), [1]),
    "rnn": (Recurrent("RNN"), [0]),
    "bidirectional": (Recurrent(bidirectional=True), None),
    "final_state": (Recurrent(mix="final_state"), None),
    "mean_over_time": (Recurrent(mix="mean"), None),
    "softmax_over_time": (Recurrent(mix="softmax_over_time"), None),
    "centred_conv": (Recurrent(mix="conv"), None),
    "flip": (Recurrent(mix="flip"), None),
}


# "op" keeps a bidirectional layer one node; "layer" (the default) splits it per direction
@pytest.mark.parametrize(
    "case, granularity",
    [(case, "layer") for case in CASES] + [("lstm", "op"), ("bidirectional", "op")],
)
def test_causal_exactly_when_brute_force_says_so(case, granularity):
    model, expected = CASES[case]
    model.eval()
    (x,) = inputs(model)
    gm = capture(model, (x,), granularity=granularity)
    assert causal_time_axes(gm, [model.time]) == expected
    assert causal_by_brute_force(model, x) == (expected is not None)


def test_a_one_step_example_proves_nothing():
    model = Recurrent().eval()
    (x,) = inputs(model)
    assert causal_time_axes(capture(model, (x[:1],)), [0]) is None


VOCABULARY = 50


class Tokens(nn.Module):
    """A language model: a row lookup per token, an LSTM, and an output layer large enough to
    become one chrion::dense node."""

    def __init__(self, lookup: str, bidirectional: bool = False):
        super().__init__()
        self.lookup = lookup
        self.embedding = nn.Embedding(VOCABULARY, FEATURES)
        self.rnn = nn.LSTM(FEATURES, 8, bidirectional=bidirectional)
        self.head = nn.Linear(16 if bidirectional else 8, 8192)

    def forward(self, tokens):
        if self.lookup == "index":  # aten.index.Tensor: chrion::gather_rows
            x = self.embedding.weight[tokens]
        else:
            x = self.embedding(tokens)
        y, _ = self.rnn(x)
        return self.head(y).log_softmax(-1)


def tokens_causal_by_brute_force(model, tokens) -> bool:
    """causal_by_brute_force for token inputs [T, B]."""
    with torch.no_grad():
        base = model(tokens)
        for k in (1, STEPS // 2, STEPS - 1):
            changed = tokens.clone()
            changed[k:] = (changed[k:] + 1) % VOCABULARY  # every token from step k on
            if not torch.equal(base[:k], model(changed)[:k]):
                return False
    return True


@pytest.mark.parametrize(
    "lookup, bidirectional, expected",
    [("embedding", False, [0]), ("index", False, [0]), ("embedding", True, None)],
)
def test_row_lookups_and_dense_products_keep_time(lookup, bidirectional, expected):
    model = Tokens(lookup, bidirectional).eval()
    tokens = torch.randint(0, VOCABULARY, (STEPS, 2), generator=torch.Generator().manual_seed(0))
    gm = capture(model, (tokens,))
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    lookup_op = (
        torch.ops.aten.embedding.default
        if lookup == "embedding"
        else (torch.ops.chrion.gather_rows.default)
    )
    assert {lookup_op, torch.ops.chrion.dense.default} <= targets
    assert causal_time_axes(gm, [0]) == expected
    assert tokens_causal_by_brute_force(model, tokens) == (expected is not None)
