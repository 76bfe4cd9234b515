"""Random placements of the shared recurrent models over 1-3 CPU lanes give eager's outputs."""

import pytest
import torch
from models import (
    BiGRUWithState,
    Seq2SeqAttention,
    SpeechConvBiGRU,
    StackedLSTM,
    UnrolledLSTMCell,
)
from runtime_helpers import aten_graph, random_order, random_placement

from torch_chrion.runtime import PlacedGraph

LANE_SETS = [["cpu"], ["cpu:0", "cpu:1"], ["cpu:0", "cpu:1", "cpu:2"]]


@pytest.mark.parametrize(
    "model_class",
    [StackedLSTM, BiGRUWithState, Seq2SeqAttention, SpeechConvBiGRU, UnrolledLSTMCell],
)
@pytest.mark.parametrize("lanes", LANE_SETS, ids=lambda lanes: f"{len(lanes)}lanes")
@pytest.mark.parametrize("granularity", ["op", "layer"])
def test_random_placements_match_eager(model_class, lanes, granularity):
    torch.manual_seed(0)
    model = model_class().eval()
    gm = aten_graph(model, *model.example_inputs(), granularity=granularity)
    if model_class is not UnrolledLSTMCell:  # nn.LSTM / nn.GRU layers stay whole
        assert any("chrion" in str(n.target) for n in gm.graph.nodes)
    for seed in range(3):
        module = PlacedGraph(
            gm, random_placement(gm, lanes, seed), random_order(gm, seed), cpu_threads=1
        )
        assert module.python_nodes == []
        inputs = model.example_inputs()
        with torch.no_grad():
            expected = model(*inputs)
        torch.testing.assert_close(module(*inputs), expected)
        module.stop()
