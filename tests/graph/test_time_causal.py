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
