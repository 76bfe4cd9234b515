"""Operator failures reach the caller naming node, lane and op; the module stays usable; lanes
stop and join."""

import gc
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from process_threads import os_thread_ids
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


def sin_then_python(fn):
    """sin(x) on cpu:0, then the Python callable ``fn`` of it on cpu:1."""
    graph = torch.fx.Graph()
    y = graph.call_function(torch.ops.aten.sin.default, (graph.placeholder("x"),))
    z = graph.call_function(fn, (y,))
    graph.output(z)
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    return PlacedGraph(gm, {y.name: "cpu:0", z.name: "cpu:1"})


def test_python_node_failure_is_an_execution_error():
    def boom(t):
        raise ValueError("planted failure")

    module = sin_then_python(boom)
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


def test_python_step_exception_is_the_cause_with_its_type_and_traceback():
    def pick(t):
        return t[7]  # IndexError for fewer than 8 elements

    module = sin_then_python(pick)
    with pytest.raises(ExecutionError, match="IndexError") as info:
        module(torch.randn(4))
    cause = info.value.__cause__
    assert type(cause) is IndexError
    frames = [frame.name for frame in traceback.extract_tb(cause.__traceback__)]
    assert "pick" in frames
    x = torch.randn(8)
    torch.testing.assert_close(module(x), torch.sin(x)[7])  # and the module still works


def test_warning_on_a_lane_reaches_the_caller():
    def masked(x, mask):
        return x[mask]  # aten::index with a uint8 mask: TORCH_WARN in ATen, on the lane thread

    x, mask = torch.randn(4), torch.tensor([1, 0, 1, 0], dtype=torch.uint8)
    gm = aten_graph(masked, x, mask)
    module = PlacedGraph(gm, {n.name: "cpu:1" for n in schedulable(gm)})
    with pytest.warns(UserWarning, match="indexing with dtype torch.uint8 is now deprecated"):
        out = module(x, mask)
    torch.testing.assert_close(out, x[mask.bool()])


def test_stop_from_many_threads_and_calls_after_stop_raise_a_chrion_error():
    module, (x, w, v) = make()
    module(x, w, v)
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: module.stop(timeout_s=5.0), range(4))) == [True] * 4
    assert module.stop() is True  # idempotent
    with pytest.raises(ExecutionError, match="stopped"):
        module(x, w, v)
    raw = module._executor
    with ThreadPoolExecutor(4) as pool:  # the executor itself, bypassing the module's guard
        assert all(pool.map(lambda _: raw.stop(1.0), range(4)))


def test_modules_share_lanes_and_threads_exit_when_the_last_one_stops():
    gc.collect()
    base = os_thread_ids()
    x, w, v = torch.randn(3, 4), torch.randn(4, 5), torch.randn(1, 5)
    gm = aten_graph(net, x, w, v)
    # lane names no other test uses, so that no module elsewhere holds these lanes
    placement = {n.name: ("cpu:7" if n.name == "mm" else "cpu:6") for n in schedulable(gm)}
    modules = [PlacedGraph(gm, placement) for _ in range(3)]
    lanes = os_thread_ids() - base
    assert len(lanes) == 2  # one thread per lane, shared by the three modules
    assert modules[0].stop(timeout_s=5.0) and modules[1].stop(timeout_s=5.0)
    assert lanes <= os_thread_ids()
    torch.testing.assert_close(modules[2](x, w, v), net(x, w, v))
    assert modules[2].stop(timeout_s=5.0)
    assert not lanes & os_thread_ids()
