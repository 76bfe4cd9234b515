"""fold_input_free on views of weights: an expand of a constant initial state becomes an
attribute that views the weight (no step per call), equal to eager PyTorch and following
in-place writes into the weight; a view of an nn.Parameter stays a node; the saved graph runs
as the captured one."""

import pytest
import torch
from torch import nn

import torch_chrion
from torch_chrion.graph import capture
from torch_chrion.graph.passes.fold_input_free import VIEW_PREFIX

FAST = {"devices": ["cpu"], "profile_warmup": 1, "profile_repeats": 2}


class LearnedState(nn.Module):
    """A GRU whose initial state is the model's own tensor, expanded to the batch."""

    def __init__(self, as_parameter: bool) -> None:
        super().__init__()
        state = torch.randn(1, 1, 8)
        if as_parameter:
            self.h0 = nn.Parameter(state)
        else:
            self.register_buffer("h0", state)
        self.gru = nn.GRU(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x, self.h0.expand(1, x.shape[1], 8).contiguous())[0]


def expands(gm) -> int:
    return sum(n.target is torch.ops.aten.expand.default for n in gm.graph.nodes)


def views_of(gm, tensor: torch.Tensor) -> list[torch.Tensor]:
    storage = tensor.untyped_storage().data_ptr()
    return [
        value
        for name, value in gm.named_buffers()
        if name.startswith(VIEW_PREFIX) and value.untyped_storage().data_ptr() == storage
    ]


def test_a_view_of_a_constant_weight_folds_and_follows_in_place_writes():
    torch.manual_seed(0)
    model = LearnedState(as_parameter=False).eval()
    x = torch.randn(5, 3, 4)
    gm = capture(model, (x,))
    assert expands(gm) == 0
    assert [v.shape for v in views_of(gm, model.h0)] == [(1, 3, 8)]
    chrion = torch_chrion.compile_graph(model, (x,), torch_chrion.ChrionSettings(**FAST))
    with torch.no_grad():
        torch.testing.assert_close(chrion(x), model(x))
        model.h0.copy_(torch.randn(1, 1, 8))  # what load_state_dict does
        torch.testing.assert_close(chrion(x), model(x))


def test_a_view_of_a_parameter_stays_a_node():
    torch.manual_seed(0)
    model = LearnedState(as_parameter=True).eval()
    x = torch.randn(5, 3, 4)
    assert expands(capture(model, (x,))) == 1
    chrion = torch_chrion.compile_graph(model, (x,), torch_chrion.ChrionSettings(**FAST))
    with torch.no_grad():
        torch.testing.assert_close(chrion(x), model(x))
        model.h0.copy_(torch.randn(1, 1, 8))
        torch.testing.assert_close(chrion(x), model(x))


@pytest.mark.parametrize("as_parameter", [False, True])
def test_the_saved_graph_runs_as_the_captured_one(tmp_path, as_parameter):
    from torch_chrion.graph.serialize import load_graph, save_graph

    torch.manual_seed(0)
    model = LearnedState(as_parameter).eval()
    x = torch.randn(5, 3, 4)
    gm = capture(model, (x,))
    save_graph(gm, tmp_path / "graph.json", tmp_path / "tensors.pt")
    loaded = load_graph(tmp_path / "graph.json", tmp_path / "tensors.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
