"""Per-lane step traces, exported as Chrome / Perfetto trace JSON."""

import json

import torch
from runtime_helpers import aten_graph, schedulable

from torch_chrion.runtime import PlacedGraph


def f(x):
    return torch.sin(x) + torch.cos(x)


def test_trace_has_every_step_once_on_its_lane_and_saves_as_chrome_json(tmp_path):
    x = torch.randn(8)
    gm = aten_graph(f, x)
    placement = {n.name: ("cpu:0" if n.name == "sin" else "cpu:1") for n in schedulable(gm)}
    module = PlacedGraph(gm, placement)
    module(x)
    assert module.last_trace() == []  # off by default
    module.enable_trace()
    module(x)
    events = module.last_trace()
    assert sorted((e.node, e.lane) for e in events) == sorted(placement.items())
    by_node = {e.node: e for e in events}
    assert by_node["add"].start_us >= max(by_node["sin"].end_us, by_node["cos"].end_us)
    assert all(e.end_us >= e.start_us for e in events)

    path = module.save_trace(tmp_path / "trace.json")
    doc = json.loads(path.read_text())
    spans = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    names = {e["args"]["name"]: e["tid"] for e in doc["traceEvents"] if e["ph"] == "M"}
    assert names == {"cpu:0": 0, "cpu:1": 1}
    assert {(e["name"], e["tid"]) for e in spans} == {
        (node, names[lane]) for node, lane in placement.items()
    }
