"""Operator failures reach the caller naming node, lane and op; the module stays usable; lanes
stop and join."""

import threading

import pytest
import torch
from runtime_helpers import aten_graph, schedulable

from torch_chrion.errors import ExecutionError
from torch_chrion.runtime import PlacedGraph


def net(x, w, v):
    a = torch.tanh(x @ w)  # fails when x's width does not match w
    b = torch.sigmoid(x.sum(1, keepdim=True) * v)  # independent branch on the other lane
    return a.sum(1, keepdim=True) + b


def make():
    x, w, v = torch.randn(3, 4), torch.randn(4, 5), torch.randn(1, 5)
    gm = aten_graph(net, x, w, v)
    placement = {n.name: ("cpu:1" if n.name == "mm" else "cpu:0") for n in schedulable(gm)}
    return PlacedGraph(gm, placement), (x, w, v)


def test_failing_operator_names_node_lane_and_op_and_next_call_works():
    module, (x, w, v) = make()
    for _ in range(3):
        with pytest.raises(ExecutionError, match=r"node 'mm' \(aten::mm\) on lane cpu:1") as info:
            module(torch.randn(3, 7), w, v)
        assert (info.value.node, info.value.lane, info.value.op) == ("mm", "cpu:1", "aten::mm")
        assert "shapes cannot be multiplied" in str(info.value)
        torch.testing.assert_close(module(x, w, v), net(x, w, v))


def test_python_node_failure_is_an_execution_error():
    def boom(t):
        raise ValueError("planted failure")

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    y = graph.call_function(torch.ops.aten.sin.default, (x,))
    z = graph.call_function(boom, (y,))
    graph.output(z)
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    module = PlacedGraph(gm, {y.name: "cpu:0", z.name: "cpu:1"})
    assert module.python_nodes == ["boom"]
    with pytest.raises(ExecutionError, match="planted failure") as info:
        module(torch.randn(2))
    assert info.value.node == "boom"


def test_concurrent_failures_do_not_disturb_good_calls():
    module, (x, w, v) = make()
    expected = net(x, w, v)
    errors, bad = [], torch.randn(3, 9)

    def worker(i):
        for k in range(50):
            try:
                if (i + k) % 3 == 0:
                    with pytest.raises(ExecutionError):
                        module(bad, w, v)
                else:
                    torch.testing.assert_close(module(x, w, v), expected)
            except BaseException as exc:  # noqa: BLE001 - collected for the main thread
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_stop_joins_lanes_and_later_calls_fail_cleanly():
    module, (x, w, v) = make()
    module(x, w, v)
    before = threading.active_count()  # lane threads are not Python threads: count native
    assert module.stop(timeout_s=5.0) is True
    assert module.stop() is True  # idempotent
    assert threading.active_count() == before
    with pytest.raises(RuntimeError, match="stopped"):
        module(x, w, v)


def test_lane_threads_exit_on_stop():
    import psutil

    process = psutil.Process()
    base = process.num_threads()
    modules = [make()[0] for _ in range(3)]
    assert process.num_threads() >= base + 6  # two lanes each
    for m in modules:
        assert m.stop(timeout_s=5.0)
    assert process.num_threads() <= base
