"""pack_padded_sequence -> nn.LSTM/GRU/RNN -> pad_packed_sequence under torch.compile(backend=
"chrion"): captured whole into chrion's graph (no graph break, every call in chrion), exact to
eager, for lengths that vary per sequence and per call."""

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import torch_chrion.dynamo as chrion_dynamo


def reset_dynamo():
    torch._dynamo.reset()
    chrion_dynamo.install_compile_hooks()
    counters.clear()


class Packed(nn.Module):
    def __init__(self, kind, bidirectional, batch_first=True, **packing):
        super().__init__()
        self.rnn = kind(6, 8, num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
        self.batch_first = batch_first
        self.packing = packing

    def forward(self, x, lengths):
        sorted_ = self.packing.get("enforce_sorted", False)
        packed = pack_padded_sequence(x, lengths, self.batch_first, enforce_sorted=sorted_)
        out, state = self.rnn(packed)
        total = self.packing.get("total_length")
        y, out_lengths = pad_packed_sequence(out, self.batch_first, total_length=total)
        states = state if isinstance(state, tuple) else (state,)  # LSTM: h_n and c_n
        return (y, out_lengths, *states)


# (padded length, lengths): unsorted, ones, all full; the longest always as long as the padding
CALLS = [(7, [3, 7, 5]), (9, [9, 1, 4]), (12, [5, 12, 12]), (10, [10, 2, 7]), (8, [8, 8, 8])]


@pytest.mark.parametrize(
    "model",
    [
        Packed(nn.LSTM, bidirectional=True),
        Packed(nn.GRU, bidirectional=False),
        Packed(nn.RNN, bidirectional=True),
        Packed(nn.LSTM, bidirectional=False, batch_first=False, total_length=14),
    ],
    ids=["bilstm", "gru", "birnn", "lstm-time-major-total-length"],
)
def test_packed_sequences_run_whole_in_chrion_exact_to_eager(model):
    torch.manual_seed(0)
    model = model.eval()
    reset_dynamo()
    compiled = torch.compile(model, backend="chrion")
    with torch.no_grad():
        for steps, lengths in CALLS:
            shape = (3, steps, 6) if model.batch_first else (steps, 3, 6)
            x, lengths = torch.randn(shape), torch.tensor(lengths)
            got, want = compiled(x, lengths), model(x, lengths)
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    assert sum(counters["graph_break"].values()) == 0
    graphs = counters["stats"]["unique_graphs"]
    assert graphs <= 2  # the first call's static graph, then one for every padded length
    modules = chrion_dynamo.compiled_modules()[-graphs:]
    assert sum(m.stats["calls"] for m in modules) == len(CALLS)  # none ran outside chrion
    recurrent = [
        n
        for m in modules
        for n in m.captured_graph().graph.nodes
        if str(n.target).startswith(("chrion.lstm", "chrion.gru", "chrion.rnn"))
    ]
    assert recurrent  # the layers run as chrion's recurrent operators
    # new buckets were profiled in the background with the requests' own (valid) lengths
    assert modules[-1].wait_for_plans(timeout=120)
    assert modules[-1].stats["plan_swaps"] == modules[-1].stats["borrowed_plans"]


def test_packed_lstm_without_its_cell_state_runs_no_pytorch_lstm():
    class HiddenOnly(Packed):
        def forward(self, x, lengths):
            return super().forward(x, lengths)[:3]  # y, lengths, h_n

    model = HiddenOnly(nn.LSTM, bidirectional=True).eval()
    reset_dynamo()
    compiled = torch.compile(model, backend="chrion")
    x, lengths = torch.randn(3, 7, 6), torch.tensor([3, 7, 5])
    with torch.no_grad():
        for g, w in zip(compiled(x, lengths), model(x, lengths), strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    targets = {
        str(n.target) for n in chrion_dynamo.compiled_modules()[-1].captured_graph().graph.nodes
    }
    assert not any("lstm_packed_cell_state" in t for t in targets)


@pytest.mark.parametrize(
    ("packing", "steps", "lengths", "message"),
    [
        ({"enforce_sorted": True}, 7, [3, 7, 5], "sorted in decreasing order"),
        ({}, 7, [3, 6, 5], "total_length"),
        ({}, 7, [7, 0, 5], "between 1 and the padded length"),
    ],
    ids=["unsorted", "shorter-than-padding", "empty-sequence"],
)
def test_packed_sequences_pytorch_refuses_are_refused(packing, steps, lengths, message):
    model = Packed(nn.GRU, bidirectional=False, **packing).eval()
    x, lengths = torch.randn(3, steps, 6), torch.tensor(lengths)
    reset_dynamo()
    compiled = torch.compile(model, backend="chrion")
    with torch.no_grad(), pytest.raises(Exception, match=message):
        compiled(x, lengths)


def test_packed_sequences_in_training_mode_are_a_clear_error():
    model = Packed(nn.LSTM, bidirectional=False).train()
    reset_dynamo()
    compiled = torch.compile(model, backend="chrion")
    with pytest.raises(Exception, match=r"training mode.*model\.eval\(\)"):
        compiled(torch.randn(3, 7, 6), torch.tensor([7, 3, 5]))


@pytest.mark.parametrize("given_lengths", [True, False], ids=["lengths-given", "shapes-only"])
def test_warmup_of_a_packed_model_runs_with_valid_lengths(given_lengths):
    model = Packed(nn.LSTM, bidirectional=True).eval()
    reset_dynamo()
    compiled = torch.compile(model, backend="chrion")
    with torch.no_grad():
        for steps, lengths in CALLS[:2]:  # the second length makes the graph shape-generic
            compiled(torch.randn(3, steps, 6), torch.tensor(lengths))
        module = chrion_dynamo.compiled_modules()[-1]
        # inputs in the graph's order: the lengths, the padded length (a SymInt), the batch;
        # zeros as lengths (what warmup made up before) are refused by pack_padded_sequence
        lengths = torch.tensor([30, 12, 5]) if given_lengths else (3,)
        module.warmup([[lengths, 30, (3, 30, 6)]])
        x, lengths = torch.randn(3, 30, 6), torch.tensor([30, 2, 17])
        before = module.stats["borrowed_plans"]
        for g, w in zip(compiled(x, lengths), model(x, lengths), strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    assert module.stats["borrowed_plans"] == before  # bucket 32 was planned by warmup
