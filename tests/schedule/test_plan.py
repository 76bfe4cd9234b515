"""Plan from an aten graph and a (fake, duck-typed) Profile: TaskGraph building with getitem
folding, make_plan, JSON round trip, atomic save, validation errors, pictures."""

import dataclasses
import json
import math
import operator
import os

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from torch_chrion.errors import InfeasiblePlanError, PlanError
from torch_chrion.schedule import Plan, make_plan, simulate, task_graph_from
from torch_chrion.schedule.memory import resident_timeline
from torch_chrion.settings import ChrionSettings

LANES = ["cpu:0", "cpu:1", "cuda:0"]


def model(x, w):
    a = torch.mm(x, w)
    m, idx = torch.max(a, dim=1)
    b = torch.relu(a)
    return b.sum(dim=1) + m, idx


def aten_graph():
    gm = make_fx(model)(torch.randn(4, 8), torch.randn(8, 16))
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        vals = val if isinstance(val, (tuple, list)) else [val]
        node.meta["chrion_out_bytes"] = sum(
            v.numel() * v.element_size() for v in vals if isinstance(v, torch.Tensor)
        )
        node.meta["chrion_weight_bytes"] = 512 if node.target is torch.ops.aten.mm.default else 0
    return gm


class FakeProfile:
    """What make_plan reads of a Profile: devices, node_ms, transfer."""

    def __init__(self, gm):
        self.devices = list(LANES)
        self.graph_hash = "abc123"
        self.node_ms = {}
        for k, node in enumerate(gm.graph.nodes):
            if node.op == "call_function" and node.target is not operator.getitem:
                self.node_ms[node.name] = {"cpu:0": 1.0 + k, "cpu:1": 1.5 + k, "cuda:0": 0.5}
        self.transfer = {
            "cpu:0->cuda:0": [0.2, 1000.0], "cpu:1->cuda:0": [0.2, 1000.0],
            "cuda:0->cpu:0": [0.3, 500.0], "cuda:0->cpu:1": [0.3, 500.0],
        }  # fmt: skip


def nodes_by_target(gm):
    return {n.target: n for n in gm.graph.nodes if n.op == "call_function"}


def test_task_graph_folds_getitems_into_their_producer():
    gm = aten_graph()
    graph, names = task_graph_from(gm, FakeProfile(gm))
    aten = torch.ops.aten
    by = nodes_by_target(gm)
    assert "getitem" not in " ".join(names)
    assert len(names) == 5  # mm, max.dim, relu, sum, add
    idx = {name: k for k, name in enumerate(names)}
    mx, add = by[aten.max.dim].name, by[aten.add.Tensor].name
    getitem_values = next(
        n for n in gm.graph.nodes if n.target is operator.getitem and n.args[1] == 0
    )
    nbytes = getitem_values.meta["chrion_out_bytes"]  # the values of max, not the indices too
    # the largest link cost of the lanes that do not share memory: cuda->cpu, 0.3 + bytes/500
    assert graph.edges[(idx[mx], idx[add])] == pytest.approx(0.3 + nbytes / 500.0)
    assert graph.transfer(idx[mx], idx[add], 0, 1) == 0.0  # cpu:0 -> cpu:1 shares memory
    assert graph.weight_bytes[idx[by[aten.mm.default].name]] == 512


def test_make_plan_validates_and_replays():
    gm = aten_graph()
    profile = FakeProfile(gm)
    plan = make_plan(gm, profile, ChrionSettings(devices=tuple(LANES), slo_ms=100.0))
    plan.validate(gm)
    assert plan.graph_hash == "abc123" and plan.slo_met is True
    assert set(plan.placement.values()) <= set(LANES)
    graph, names = task_graph_from(gm, profile)
    assert plan.predicted_ms == max(plan.finish_ms.values())
    # the plan's lanes and orders replay to its predictions
    from torch_chrion.schedule import Schedule

    device = [LANES.index(plan.placement[n]) for n in names]
    order = [[names.index(n) for n in plan.lane_order(lane)] for lane in LANES]
    sim = simulate(graph, Schedule(device, [0.0] * len(names), [0.0] * len(names), order, 0.0))
    assert sim.makespan == pytest.approx(plan.predicted_ms)


def test_memory_plan_keeps_the_accelerator_empty_when_the_slo_allows():
    gm = aten_graph()
    plan = make_plan(gm, FakeProfile(gm), ChrionSettings(objective="memory", slo_ms=1000.0,
                                                         devices=tuple(LANES)))  # fmt: skip
    assert "cuda:0" not in plan.placement.values()
    assert plan.device_bytes["cuda:0"] == 0.0


def test_strict_plan_with_an_unmeetable_slo_raises():
    gm = aten_graph()
    settings = ChrionSettings(slo_ms=0.01, strict=True, devices=tuple(LANES))
    with pytest.raises(InfeasiblePlanError, match="slo_ms=0.01") as info:
        make_plan(gm, FakeProfile(gm), settings)
    assert info.value.best_ms > 0.01
    relaxed = make_plan(gm, FakeProfile(gm), ChrionSettings(slo_ms=0.01, devices=tuple(LANES)))
    assert relaxed.slo_met is False and relaxed.predicted_ms == pytest.approx(info.value.best_ms)


def test_profile_without_a_node_is_refused_naming_it():
    gm = aten_graph()
    profile = FakeProfile(gm)
    missing = next(iter(profile.node_ms))
    del profile.node_ms[missing]
    with pytest.raises(PlanError, match=f"no cost for node '{missing}'"):
        make_plan(gm, profile, ChrionSettings(devices=tuple(LANES)))


@pytest.fixture
def plan_and_graph():
    gm = aten_graph()
    return make_plan(gm, FakeProfile(gm), ChrionSettings(devices=tuple(LANES))), gm


def test_json_round_trip(tmp_path, plan_and_graph):
    plan, gm = plan_and_graph
    path = tmp_path / "p.plan.json"
    plan.save(path)
    loaded = Plan.load(path)
    assert loaded == plan
    loaded.validate(gm)
    assert json.loads(path.read_text())["schema_version"] == 1
    assert os.listdir(tmp_path) == ["p.plan.json"]


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, plan_and_graph, monkeypatch):
    plan, _ = plan_and_graph
    path = tmp_path / "p.plan.json"
    path.write_text("old")

    def broken(self):
        raise OSError("disk full")

    monkeypatch.setattr(Plan, "to_json", broken)
    with pytest.raises(OSError, match="disk full"):
        plan.save(path)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["p.plan.json"]


def edited(plan, edit):
    data = json.loads(plan.to_json())
    edit(data)
    return json.dumps(data)


def test_load_errors_name_the_fault(tmp_path, plan_and_graph):
    plan, _ = plan_and_graph
    first = plan.order[0]

    def lane(d):
        d["placement"][first] = "tpu:0"

    def version(d):
        d["schema_version"] = 99

    def twice(d):
        d["order"].append(first)

    def times(d):
        d["start_ms"][first] = math.nan

    cases = [(lane, "unknown lane 'tpu:0'"), (version, "schema_version 99"),
             (twice, f"'{first}' appears twice"), (times, rf"start_ms\['{first}'\] must be a finite number")]  # fmt: skip
    for edit, message in cases:
        path = tmp_path / "bad.json"
        path.write_text(edited(plan, edit))
        with pytest.raises(PlanError, match=message):
            Plan.load(path)
    path.write_text("{not json")
    with pytest.raises(PlanError, match="bad.json: not a JSON plan"):
        Plan.load(path)


def test_validate_against_the_graph(plan_and_graph):
    plan, gm = plan_and_graph
    first, last = plan.order[0], plan.order[-1]
    renamed = Plan.from_json(plan.to_json().replace(f'"{last}"', '"ghost"'))
    with pytest.raises(PlanError, match="node 'ghost', which the graph does not have"):
        renamed.validate(gm)
    reordered = Plan.from_json(plan.to_json())
    reordered.order = [last, *plan.order[1:-1], first]
    with pytest.raises(PlanError, match="before its input"):
        reordered.validate(gm)


def test_gantt_and_table(tmp_path, plan_and_graph):
    plan, _ = plan_and_graph
    png = tmp_path / "plan.png"
    plan.gantt(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = plan.table()
    assert all(name in text for name in plan.order)
    assert "predicted" in text


@pytest.fixture
def split_plan():
    """A plan whose mm runs on cuda:0 and the rest on CPU lanes: cross-device copies."""
    gm = aten_graph()
    profile = FakeProfile(gm)
    for name, costs in profile.node_ms.items():
        fast_on_gpu = name.startswith("mm")
        costs.update(
            {"cpu:0": 9.0, "cpu:1": 9.0, "cuda:0": 0.1} if fast_on_gpu else {"cuda:0": 9.0}
        )
    return make_plan(gm, profile, ChrionSettings(devices=tuple(LANES))), gm


def test_plan_records_ops_transfers_and_memory(tmp_path, split_plan):
    plan, gm = split_plan
    assert plan.ops == {
        n.name: str(n.target)
        for n in gm.graph.nodes
        if n.op == "call_function" and n.target is not operator.getitem
    }
    assert plan.transfers, "mm on cuda:0 feeds CPU nodes"
    for src, dst, from_lane, to_lane, start, finish in plan.transfers:
        assert (from_lane, to_lane) == (plan.placement[src], plan.placement[dst])
        assert from_lane != to_lane and start == plan.finish_ms[src]
        assert start < finish <= plan.start_ms[dst] + 1e-9  # the consumer waits for its copy
    for lane, points in plan.memory.items():
        times = [t for t, _ in points]
        assert times == sorted(times)
        assert max(b for _, b in points) == pytest.approx(plan.device_bytes[lane])
    path = tmp_path / "p.plan.json"
    plan.save(path)
    assert Plan.load(path) == plan


def test_gantt_scales_to_the_plan_not_to_a_far_slo(tmp_path, split_plan):
    plan, _ = split_plan
    far = dataclasses.replace(plan, slo_ms=100 * plan.predicted_ms, slo_met=True)
    figure = far.gantt(tmp_path / "far.png")
    predicted, memory = figure.axes  # timeline (lanes + transfers), then cuda:0 memory
    assert predicted.get_xlim()[1] <= 1.1 * plan.predicted_ms
    assert "off the axis" in predicted.get_title()
    labels = [t.get_text() for t in predicted.get_yticklabels()]
    assert labels == [*LANES, "transfers"]
    assert [line.get_label() for line in memory.get_lines()] == ["cuda:0 predicted"]
    near = dataclasses.replace(plan, slo_ms=plan.predicted_ms, slo_met=True)
    figure = near.gantt(tmp_path / "near.png")
    assert "(red)" in figure.axes[0].get_title()


def test_gantt_memory_track_is_the_memory_model(tmp_path, split_plan):
    """The drawn GPU memory track, point by point, is schedule/memory.py's resident timeline of
    the plan's placement and times; it starts at the weights placed there (the mm's 512 bytes)
    and peaks at the plan's device_bytes."""
    plan, gm = split_plan
    graph, names = task_graph_from(gm, FakeProfile(gm), LANES)
    device = [LANES.index(plan.placement[name]) for name in names]
    start = [plan.start_ms[name] for name in names]
    finish = [plan.finish_ms[name] for name in names]
    model = resident_timeline(graph, device, start, finish)[LANES.index("cuda:0")]
    figure = plan.gantt(tmp_path / "g.png")
    (line,) = figure.axes[-1].get_lines()
    times, mib = line.get_data()
    assert list(times[:-1]) == pytest.approx([t for t, _ in model])
    assert list(mib[:-1]) == pytest.approx([b / 2**20 for _, b in model])
    assert mib[0] == pytest.approx(512 / 2**20)
    assert max(mib) == pytest.approx(plan.device_bytes["cuda:0"] / 2**20)
    assert times[-1] == pytest.approx(figure.axes[-1].get_xlim()[1])  # held to the axis' end


def test_gantt_draws_the_measured_memory_a_trace_carries(tmp_path, split_plan):
    from torch_chrion.runtime.trace import MemorySample, TraceEvent, load_memory, save_chrome_trace

    plan, _ = split_plan
    steps = [TraceEvent(n, "op", plan.placement[n], 0, 0.0, 10.0) for n in plan.order]
    samples = [MemorySample("cuda:0", 0.0, 2048), MemorySample("cuda:0", 5.0, 4096)]
    samples.append(MemorySample("cpu", 1.0, 99))  # the host's: not on a GPU plan's track
    save_chrome_trace(steps, LANES, tmp_path / "run.json", samples)
    assert load_memory(tmp_path / "run.json") == samples
    figure = plan.gantt(tmp_path / "g.png", measured_memory=load_memory(tmp_path / "run.json"))
    lines = {line.get_label(): line for line in figure.axes[-1].get_lines()}
    assert set(lines) == {"cuda:0 predicted", "cuda:0 measured"}
    times, mib = lines["cuda:0 measured"].get_data()
    assert list(times[:-1]) == pytest.approx([0.0, 0.005])  # µs on the trace, ms on the axis
    assert list(mib) == pytest.approx([2048 / 2**20, 4096 / 2**20, 4096 / 2**20])
    assert lines["cuda:0 measured"].get_linestyle() == "--"


def test_show_writes_op_names_and_draws_a_measured_trace(tmp_path, split_plan, capsys):
    from torch_chrion.cli import main
    from torch_chrion.runtime.trace import TraceEvent, load_chrome_trace, save_chrome_trace

    plan, _ = split_plan
    plan.save(tmp_path / "p.plan.json")
    measured = [
        TraceEvent(
            node, plan.ops[node], lane, 0, plan.start_ms[node] * 900, plan.finish_ms[node] * 900
        )
        for node, lane in plan.placement.items()
    ]
    save_chrome_trace(measured, list(plan.devices), tmp_path / "run.json")
    args = ["show", str(tmp_path / "p.plan.json"), "--trace", str(tmp_path / "predicted.json")]
    args += ["--gantt", str(tmp_path / "g.png"), "--measured", str(tmp_path / "run.json")]
    assert main(args) == 0
    predicted = load_chrome_trace(tmp_path / "predicted.json")
    assert {e.node: e.op for e in predicted} == plan.ops
    assert load_chrome_trace(tmp_path / "run.json") == measured
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
