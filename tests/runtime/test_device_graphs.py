"""Device graphs (Note [Device graph segments] in torch_chrion/runtime/device_graphs.py) without a
GPU: on the executor's test-only device ("fake:N"), RecordedCapture gives a segment a CUDA
graph's semantics (capture computes nothing that is kept, replay writes into the captured
tensors), so a segment that skipped the copy of its inputs or the replay would return stale
values or NaN."""

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from models import BiGRUWithState, Seq2SeqAttention, SpeechConvBiGRU, StackedLSTM
from runtime_helpers import aten_graph, random_order, random_placement

from torch_chrion.runtime import PlacedGraph, device_graphs
from torch_chrion.runtime.device_graphs import find_segments

TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.mark.parametrize(
    "model_class", [StackedLSTM, BiGRUWithState, Seq2SeqAttention, SpeechConvBiGRU]
)
@pytest.mark.parametrize("seed", range(3))
def test_placements_with_device_graphs_match_eager_on_every_call(model_class, seed):
    torch.manual_seed(seed)
    model = model_class().eval()
    gm = aten_graph(model, *model.example_inputs())
    lanes = ["fake:0"] if seed == 0 else ["cpu:0", "fake:0"]
    module = PlacedGraph(
        gm, random_placement(gm, lanes, seed), random_order(gm, seed), device_graphs=True
    )
    calls = 4
    for _ in range(calls):
        inputs = model.example_inputs()
        with torch.no_grad():
            expected = model(*inputs)
        torch.testing.assert_close(module(*inputs), expected, **TOL)
    segments = module.device_graphs()
    if seed == 0:  # the whole graph on the device: one segment, in plan order
        assert [s["nodes"] for s in segments] == [random_order(gm, seed)]
    for s in segments:  # eager once, then captured and replayed
        assert (s["captures"], s["eager_calls"], s["replays"], s["failure"]) == (
            1,
            1,
            calls - 1,
            None,
        )
    module.stop()


def chain_graph():
    """x -> a = x * 2 -> b = a + 1 -> c = b * x -> d = relu(c) -> e = d - a."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    a = graph.call_function(torch.ops.aten.mul.Tensor, (x, 2.0))
    b = graph.call_function(torch.ops.aten.add.Tensor, (a, 1.0))
    c = graph.call_function(torch.ops.aten.mul.Tensor, (b, x))
    d = graph.call_function(torch.ops.aten.relu.default, (c,))
    e = graph.call_function(torch.ops.aten.sub.Tensor, (d, a))
    graph.output(e)
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    return gm, [n.name for n in (a, b, c, d, e)]


def reference(x):
    a = x * 2
    return torch.relu((a + 1) * x) - a


def test_a_value_from_another_lane_ends_a_segment():
    gm, (a, b, c, d, e) = chain_graph()
    placement = {a: "fake:0", b: "fake:0", c: "cpu:0", d: "fake:0", e: "fake:0"}
    found = find_segments(gm, placement, None, ["fake:0"])
    # d reads c from the CPU lane: it starts a new segment (e reads a, earlier on the same lane)
    assert [[n.name for n in s] for s in found] == [[a, b], [d, e]]
    module = PlacedGraph(gm, placement, device_graphs=True)
    for _ in range(3):
        x = torch.randn(6)
        torch.testing.assert_close(module(x), reference(x))
    assert [s["nodes"] for s in module.device_graphs()] == [[a, b], [d, e]]
    lanes = {}
    module.enable_trace()
    module(torch.randn(6))
    for event in module.last_trace():
        lanes[event.node] = event.lane
    assert lanes[f"device_graph_{a}"] == lanes[f"device_graph_{d}"] == "fake:0"
    assert lanes[c] == "cpu:0"


def test_a_lone_small_node_and_in_place_ops_are_not_captured():
    gm, (a, b, c, d, e) = chain_graph()
    placement = {a: "fake:0", b: "cpu:0", c: "fake:0", d: "cpu:0", e: "cpu:0"}
    assert find_segments(gm, placement, None, ["fake:0"]) == []  # one node each, no recurrence
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    y = graph.call_function(torch.ops.aten.mul.Tensor, (x, 2.0))
    z = graph.call_function(torch.ops.aten.add_.Tensor, (y, 1.0))
    w = graph.call_function(torch.ops.aten.neg.default, (z,))
    graph.output(w)
    inplace = torch.fx.GraphModule(torch.nn.Module(), graph)
    lanes = dict.fromkeys((y.name, z.name, w.name), "fake:0")
    assert find_segments(inplace, lanes, None, ["fake:0"]) == []


def test_each_input_shape_gets_its_own_capture():
    gm, names = chain_graph()
    module = PlacedGraph(gm, dict.fromkeys(names, "fake:0"), device_graphs=True)
    for _ in range(3):
        for length in (4, 9):
            x = torch.randn(length)
            torch.testing.assert_close(module(x), reference(x))
    (status,) = module.device_graphs()
    assert (status["captures"], status["eager_calls"], status["replays"]) == (2, 2, 4)


def test_signatures_beyond_the_limit_run_eagerly(monkeypatch):
    monkeypatch.setattr(device_graphs, "MAX_CAPTURES", 2)
    gm, names = chain_graph()
    module = PlacedGraph(gm, dict.fromkeys(names, "fake:0"), device_graphs=True)
    for _ in range(2):
        for length in (3, 4, 5):
            x = torch.randn(length)
            torch.testing.assert_close(module(x), reference(x))
    (status,) = module.device_graphs()
    assert (status["captures"], status["replays"], status["eager_calls"]) == (2, 2, 4)


def test_a_failed_capture_warns_once_and_runs_eagerly(monkeypatch):
    def fail(self, fn, inputs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(device_graphs.RecordedCapture, "capture", fail)
    gm, names = chain_graph()
    module = PlacedGraph(gm, dict.fromkeys(names, "fake:0"), device_graphs=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            x = torch.randn(5)
            torch.testing.assert_close(module(x), reference(x))
    messages = [str(w.message) for w in caught if "device graph" in str(w.message)]
    assert len(messages) == 1
    assert names[0] in messages[0] and "not permitted when stream is capturing" in messages[0]
    (status,) = module.device_graphs()
    assert status["failure"].startswith("RuntimeError: operation not permitted")
    assert (status["captures"], status["replays"], status["eager_calls"]) == (0, 0, 4)


def test_concurrent_calls_with_device_graphs_equal_serial_results():
    torch.manual_seed(0)
    model = BiGRUWithState().eval()
    gm = aten_graph(model, *model.example_inputs())
    module = PlacedGraph(
        gm, random_placement(gm, ["cpu:0", "fake:0"], 1), random_order(gm, 1), device_graphs=True
    )
    inputs = [model.example_inputs() for _ in range(24)]
    with torch.no_grad():
        expected = [model(*x) for x in inputs]
    barrier = threading.Barrier(4)

    def call(k):
        if k < 4:
            barrier.wait()
        return module(*inputs[k])

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, range(len(inputs))))
    for got, want in zip(results, expected, strict=True):
        torch.testing.assert_close(got, want, **TOL)
    assert all(s["replays"] > 0 for s in module.device_graphs())
    module.stop()


def test_segments_are_not_counted_as_python_nodes():
    gm, names = chain_graph()
    module = PlacedGraph(gm, dict.fromkeys(names, "fake:0"), device_graphs=True)
    assert module.python_nodes == []
    assert len(module.device_graphs()) == 1


def test_signatures_seen_once_are_not_remembered_without_bound(monkeypatch):
    monkeypatch.setattr(device_graphs, "MAX_WARMED", 3)
    gm, names = chain_graph()
    module = PlacedGraph(gm, dict.fromkeys(names, "fake:0"), device_graphs=True)
    segment = module._segments[0]
    for length in range(2, 12):
        module(torch.randn(length))
    assert len(segment._warmed) <= 3
    for _ in range(2):  # a shape seen twice in a row is still captured
        x = torch.randn(20)
        torch.testing.assert_close(module(x), reference(x))
    assert module.device_graphs()[0]["captures"] == 1
