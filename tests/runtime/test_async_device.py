"""The cross-device protocol without a GPU, on the executor's test-only asynchronous lane
("fake:N", Note [Chrion fake device] in csrc/executor/executor.cpp): copies out of it land
later, on the lane's completer thread, and no host lane waits for them."""

import time

import pytest
import torch

from torch_chrion.runtime import PlacedGraph
from torch_chrion.runtime.placed_graph import executor_extension


@pytest.fixture
def gate():
    """The fake device's gate, closed for the test: copies out of fake lanes stay in flight
    until a step opens it."""
    extension = executor_extension()
    timeouts = extension.fake_gate_timeouts()
    extension.set_fake_gate(False)
    yield extension
    extension.set_fake_gate(True)
    assert extension.fake_gate_timeouts() == timeouts, "a copy landed only when the gate timed out"


def build(fn_on_cpu, cpu_lane="cpu:0"):
    """x -> p = 2x on fake:0 -> copied to the host; g = fn_on_cpu(x) on a CPU lane;
    y = p + g on that CPU lane, which runs g first (plan order)."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    p = graph.call_function(torch.ops.aten.mul.Tensor, (x, 2.0))
    g = graph.call_function(fn_on_cpu, (x,))
    y = graph.call_function(torch.ops.aten.add.Tensor, (p, g))
    graph.output(y)
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    placement = {p.name: "fake:0", g.name: cpu_lane, y.name: cpu_lane}
    return PlacedGraph(gm, placement, order=[p.name, g.name, y.name])


def test_host_lane_runs_other_work_while_a_copy_is_in_flight(gate):
    seen = []
    holder = []

    def open_gate_once_copy_is_in_flight(x):
        # runs on the CPU lane; the copy of p was issued by the fake lane and is held
        deadline = time.monotonic() + 5
        while holder[0].transfer_stats()["in_flight"] < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        seen.append(holder[0].transfer_stats()["in_flight"])
        gate.set_fake_gate(True)
        return x + 1

    module = build(open_gate_once_copy_is_in_flight)
    holder.append(module)
    assert module.lanes == ["cpu:0", "fake:0"]
    module.enable_trace()
    x = torch.randn(5)
    torch.testing.assert_close(module(x), 2 * x + (x + 1))  # NaN if y ran before the data landed
    assert seen == [1]  # the CPU lane ran g while the copy was in flight
    stats = module.transfer_stats()
    assert (stats["host_to_device"], stats["device_to_host"], stats["in_flight"]) == (1, 1, 0)
    lanes = {e.node: e.lane for e in module.last_trace()}
    assert lanes["copy:mul_tensor->cpu"] == "fake:0"  # issued by the producer's lane
    assert lanes["copy:x->fake:0"] == "fake:0"


def test_consumers_wait_for_the_data_to_land_on_every_call(gate):
    """The gate is opened from another thread after a delay; the consumer must not run first."""
    import threading

    module = build(lambda x: x + 1)
    for _ in range(20):
        gate.set_fake_gate(False)
        timer = threading.Timer(0.02, gate.set_fake_gate, args=(True,))
        timer.start()
        x = torch.randn(3)
        torch.testing.assert_close(module(x), 3 * x + 1)
        timer.join()


def test_concurrent_calls_through_an_asynchronous_lane():
    from concurrent.futures import ThreadPoolExecutor

    module = build(torch.tanh, cpu_lane="cpu:1")
    inputs = [torch.randn(4) for _ in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: module(inputs[k % 8]), range(200)))
    for k, out in enumerate(results):
        torch.testing.assert_close(out, 2 * inputs[k % 8] + torch.tanh(inputs[k % 8]))
