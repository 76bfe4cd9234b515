"""Many Python threads calling one module at once get the serial results."""

from concurrent.futures import ThreadPoolExecutor

import torch
from models import BiGRUWithState
from runtime_helpers import aten_graph, random_order, random_placement

from torch_chrion.runtime import PlacedGraph


def test_eight_threads_times_200_calls_equal_serial_results():
    torch.manual_seed(0)
    model = BiGRUWithState(features=6, hidden=8, layers=1).eval()
    gm = aten_graph(model, *model.example_inputs(seq=3, batch=2))
    module = PlacedGraph(gm, random_placement(gm, ["cpu:0", "cpu:1"], 1), random_order(gm, 1))
    inputs = [model.example_inputs(seq=3, batch=2) for _ in range(16)]
    serial = [module(*x) for x in inputs]

    def worker(t):
        mismatches = 0
        for i in range(200):
            k = (t * 7 + i) % len(inputs)
            out = module(*inputs[k])
            mismatches += not all(torch.equal(a, b) for a, b in zip(out, serial[k], strict=True))
        return mismatches

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(worker, range(8))) == [0] * 8
    with torch.no_grad():
        torch.testing.assert_close(serial[0], model(*inputs[0]))


def test_next_request_runs_on_a_free_lane_while_the_previous_is_in_flight():
    """Request k+1's first stage (lane cpu:0) runs while request k still waits in its second
    stage (lane cpu:1). Request k's second stage only finishes once request k+1's first stage
    has run, so a module that serialised whole requests would time out here, never pass."""
    import threading

    first_stage_calls = []
    first_done = threading.Event()
    second_request_started = threading.Event()

    def first_stage(x):
        first_stage_calls.append(1)
        if len(first_stage_calls) == 1:
            first_done.set()
        else:
            second_request_started.set()
        return x + 1

    def second_stage(x):
        if not second_request_started.wait(timeout=30):
            raise RuntimeError("request k+1 never started while request k was in flight")
        return x * 2

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    a = graph.call_function(first_stage, (x,))
    b = graph.call_function(second_stage, (a,))
    graph.output(b)
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    module = PlacedGraph(gm, {a.name: "cpu:0", b.name: "cpu:1"})
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(module, torch.ones(2))
        assert first_done.wait(timeout=30)
        second = pool.submit(module, torch.zeros(2))
        torch.testing.assert_close(first.result(timeout=60), torch.full((2,), 4.0))
        torch.testing.assert_close(second.result(timeout=60), torch.full((2,), 2.0))
