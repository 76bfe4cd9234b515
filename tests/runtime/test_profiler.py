"""torch.profiler sees the work of the lane threads (issue 20): each step is a user scope named
after its node, and the aten operators it runs are recorded under it, on the lane's thread."""

from __future__ import annotations

import itertools
import threading

import torch
from runtime_helpers import aten_graph, schedulable

from torch_chrion.runtime import PlacedGraph
from torch_chrion.runtime.trace import record_memory


def _model(x):
    return torch.sin(x) @ torch.cos(x).T + torch.tanh(x).sum()


def test_profiler_records_every_step_on_its_lane_thread():
    x = torch.randn(32, 32)
    gm = aten_graph(_model, x)
    nodes = schedulable(gm)
    placed = PlacedGraph(gm, {n.name: f"cpu:{i % 2}" for i, n in enumerate(nodes)})
    torch.testing.assert_close(placed(x), _model(x))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = placed(x)
    torch.testing.assert_close(out, _model(x))
    events = prof.events()
    by_name = {e.name: e for e in events}
    assert {n.name for n in nodes} <= set(by_name), sorted(by_name)
    main = threading.get_native_id()
    lane_threads = {by_name[n.name].thread for n in nodes}
    assert main not in lane_threads  # recorded on the lanes, not on the caller
    # the operators themselves were recorded too, on the lanes' threads
    assert any(e.name == "aten::sin" and e.thread in lane_threads for e in events)


def test_no_profiler_no_recorded_state():
    x = torch.randn(8, 8)
    gm = aten_graph(_model, x)
    placed = PlacedGraph(gm, {n.name: "cpu:0" for n in schedulable(gm)})
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        placed(x)
    # after the profiler, calls run as before and record nothing
    torch.testing.assert_close(placed(x), _model(x))


def test_recorded_memory_is_on_the_trace_clock():
    """record_memory moves torch.profiler's allocator samples onto the executor's trace clock:
    the 4 MiB the mm allocates for its output shows up within the mm's own traced step."""
    x, w = torch.randn(1024, 64), torch.randn(64, 1024)
    gm = aten_graph(lambda x, w: torch.relu(x @ w), x, w)
    placed = PlacedGraph(gm, {n.name: "cpu:0" for n in schedulable(gm)})
    placed.enable_trace(True)
    placed(x, w)
    samples = record_memory(lambda: placed(x, w), placed.last_trace)
    (mm,) = [e for e in placed.last_trace() if e.op == "aten::mm"]
    assert samples and all(s.device == "cpu" for s in samples)
    nbytes = 1024 * 1024 * 4
    grows = [b.us for a, b in itertools.pairwise(samples) if b.bytes - a.bytes == nbytes]
    grows += [s.us for s in samples[:1] if s.bytes == nbytes]
    # the clocks agree to within the spread of the steps' offsets (tens of µs)
    assert any(mm.start_us - 50 <= t <= mm.end_us + 50 for t in grows), (mm, samples)
