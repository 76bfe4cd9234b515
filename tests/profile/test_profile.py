"""profile_graph and Profile: every node measured on every lane, cached on disk, recorded
profiles standing in for absent devices, and JSON that round-trips or fails clearly."""

import io
import json
import math
import sys

import pytest
import torch
from models import BiGRUWithState, StackedLSTM

from torch_chrion.errors import ChrionError, OptionError, PlanError
from torch_chrion.graph import capture, graph_hash
from torch_chrion.graph.nodes import schedulable_nodes
from torch_chrion.profile import Profile, profile_graph
from torch_chrion.profile import cache as cache_module
from torch_chrion.profile import cpu as cpu_module
from torch_chrion.profile import profiler as profiler_module
from torch_chrion.profile import progress as progress_module
from torch_chrion.profile.cpu import RETIME_REPEATS, lowest_chunk_median, stale_nodes
from torch_chrion.profile.transfer import fit_line
from torch_chrion.settings import ChrionSettings

# one thread: two threads on a 2-core machine shared with other jobs can take 1000x longer
FAST = ChrionSettings(profile_warmup=1, profile_repeats=3, profile_budget_s=3, cpu_threads=1)


@pytest.fixture(scope="module")
def captured():
    torch.manual_seed(0)
    model = StackedLSTM().eval()
    inputs = model.example_inputs()
    return capture(model, inputs), inputs


@pytest.fixture
def count_timed_calls(monkeypatch):
    """Records (node names, repeats asked) of every CPU measurement: all go through the
    executor, on a traced CPU lane (profile.cpu.measure_on_cpu_lane)."""
    calls = []
    real = profiler_module.measure_on_cpu_lane

    def counting(gm, inputs, nodes, threads, warmup, repeats, budget_s, desc, *wide, **paired):
        calls.append(([n.name for n in nodes], repeats))
        return real(gm, inputs, nodes, threads, warmup, repeats, budget_s, desc, *wide, **paired)

    monkeypatch.setattr(profiler_module, "measure_on_cpu_lane", counting)
    monkeypatch.setattr(cpu_module, "measure_on_cpu_lane", counting)  # the cache's re-time
    return calls


def test_every_schedulable_node_has_a_cost_on_every_lane(captured, tmp_path):
    gm, inputs = captured
    profile = profile_graph(gm, inputs, ["cpu"], settings=FAST, cache_dir=tmp_path)
    names = {n.name for n in schedulable_nodes(gm)}
    assert set(profile.node_ms) == names
    assert all(math.isfinite(c["cpu"]) and c["cpu"] > 0 for c in profile.node_ms.values())
    assert profile.graph_hash == graph_hash(gm)
    assert profile.input_shapes == [[8, 2, 16]]
    assert profile.torch_version == torch.__version__
    # a whole LSTM layer over 8 steps does far more work than reshaping a tensor
    lstm = profile.node_ms["lstm_l0_c0"]["cpu"]
    assert lstm > 3 * profile.node_ms["view"]["cpu"]


def test_second_profile_of_same_graph_and_shapes_measures_nothing(
    captured, tmp_path, count_timed_calls, monkeypatch
):
    gm, inputs = captured
    # the re-time runs, and finds the cache current whatever the load did meanwhile (what it
    # does with a profile cached under load: the next test)
    monkeypatch.setattr(cpu_module, "stale_nodes", lambda cached, now: [])
    first = profile_graph(gm, inputs, ["cpu"], settings=FAST, cache_dir=tmp_path)
    measured = len(count_timed_calls)
    assert measured == 1 and sorted(count_timed_calls[0][0]) == sorted(
        n.name for n in schedulable_nodes(gm)
    )
    # the same model captured again (another GraphModule, same structure and shapes)
    model = StackedLSTM().eval()
    again = profile_graph(
        capture(model, inputs), inputs, ["cpu"], settings=FAST, cache_dir=tmp_path
    )
    # the second time, only the quick re-time of the cached profile (cpu.cached_profile_holds)
    assert [repeats for _, repeats in count_timed_calls[measured:]] == [RETIME_REPEATS]
    measured = len(count_timed_calls)
    assert again == first
    # other input shapes are another profile
    longer = model.example_inputs(seq=12)
    profile_graph(capture(model, longer), longer, ["cpu"], settings=FAST, cache_dir=tmp_path)
    assert len(count_timed_calls) > measured


def test_a_profile_cached_with_other_kernels_is_measured_again(
    captured, tmp_path, count_timed_calls, monkeypatch
):
    """A profile costs the code that ran: after an upgrade or an edited kernel (other sources
    of the compiled extensions) the cached one is not reused, and both stay on disk."""
    gm, inputs = captured
    monkeypatch.setattr(cpu_module, "stale_nodes", lambda cached, now: [])
    profile_graph(gm, inputs, ["cpu"], settings=FAST, cache_dir=tmp_path)
    count_timed_calls.clear()
    monkeypatch.setattr(cache_module, "built_from", lambda: ["t_other_kernels", "t_executor"])
    profile_graph(gm, inputs, ["cpu"], settings=FAST, cache_dir=tmp_path)
    assert [repeats for _, repeats in count_timed_calls] == [FAST.profile_repeats]
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_a_cached_profile_measured_under_load_is_measured_again(
    captured, tmp_path, count_timed_calls
):
    gm, inputs = captured
    first = profile_graph(gm, inputs, ["cpu"], settings=FAST, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")

    def cache_lstm_at(scale: float) -> None:
        cached = Profile.load(path)
        cached.node_ms["lstm_l0_c0"]["cpu"] = first.node_ms["lstm_l0_c0"]["cpu"] * scale
        cached.save(path)

    # 100x what the layer costs: a load burst while it was measured (re-timed, measured again)
    cache_lstm_at(100.0)
    count_timed_calls.clear()
    again = profile_graph(gm, inputs, ["cpu"], settings=FAST, cache_dir=tmp_path)
    assert [repeats for _, repeats in count_timed_calls] == [RETIME_REPEATS, FAST.profile_repeats]
    assert again.node_ms["lstm_l0_c0"]["cpu"] < 10 * first.node_ms["lstm_l0_c0"]["cpu"]
    assert Profile.load(path).node_ms == again.node_ms  # and the cache overwritten
    # 100x below: measured when the machine was quieter than now; kept
    cache_lstm_at(0.01)
    count_timed_calls.clear()
    kept = profile_graph(gm, inputs, ["cpu"], settings=FAST, cache_dir=tmp_path)
    assert [repeats for _, repeats in count_timed_calls] == [RETIME_REPEATS]
    assert kept.node_ms["lstm_l0_c0"]["cpu"] == first.node_ms["lstm_l0_c0"]["cpu"] * 0.01


def test_a_node_costs_its_quietest_chunk_and_stale_nodes_by_hand():
    # nine runs in time: a burst over the middle third, another run slow in the last third
    assert lowest_chunk_median([1, 1.2, 1.1, 9, 9, 8, 1.3, 7, 1.2]) == 1.1
    assert lowest_chunk_median([2.0]) == 2.0
    assert lowest_chunk_median([3, 1, 2, 5]) == 1.5  # chunks [3], [1, 2], [5]
    assert lowest_chunk_median([4, 4, 4, 4, 9, 9, 1, 9, 9, 9]) == 4  # [4 4 4] [4 9 9 1] [9 9 9]
    now = {"a": 1.0, "b": 0.1, "c": 10.0}
    # a: 3x and 2 ms over (> 5% of 11.1 ms); b: 3x but 0.2 ms over; c: 1.4x
    assert stale_nodes({"a": 3.0, "b": 0.3, "c": 14.0}, now) == ["a"]
    assert stale_nodes({"a": 0.1, "b": 0.01, "c": 1.0}, now) == []  # quieter then: kept
    # a few-us graph: 2.5x, but 0.03 ms over is timer noise under load, not a stale profile
    assert stale_nodes({"x": 0.05}, {"x": 0.02}) == []


def test_cpu_lanes_share_one_measurement(captured, tmp_path, count_timed_calls, monkeypatch):
    gm, inputs = captured
    # the second profile's re-time finds the cache current whatever the load did meanwhile (a
    # burst during the first measurement made it measure again: [6, 3])
    monkeypatch.setattr(cpu_module, "stale_nodes", lambda cached, now: [])
    profile = profile_graph(gm, inputs, ["cpu:0", "cpu:1"], settings=FAST, cache_dir=tmp_path)
    # one measurement of 3 repeats for both lanes, its runs alternating with runs of the
    # nodes placed wide over both lanes
    assert [repeats for _, repeats in count_timed_calls] == [3]
    for costs in profile.node_ms.values():
        assert costs["cpu:0"] == costs["cpu:1"]
    assert profile.transfer == {}
    assert profile.transfer_ms("cpu:0", "cpu:1", 10**9) == 0.0
    assert any("thread" in note for note in profile.notes)
    assert profile.wide_lanes == ["cpu:0", "cpu:1"]
    # every node has a wide cost: the plan may place the whole graph wide (plan.wide_if_faster)
    assert set(profile.wide_ms) == set(profile.node_ms)
    assert all(math.isfinite(ms) and ms > 0 for ms in profile.wide_ms.values())
    # and every node paired (beside a copy of the graph on the other lane), in the same runs
    assert set(profile.paired_ms) == set(profile.node_ms)
    assert all(math.isfinite(ms) and ms > 0 for ms in profile.paired_ms.values())
    # both measurements are cached: a second profile only re-times them briefly, together
    again = profile_graph(gm, inputs, ["cpu:0", "cpu:1"], settings=FAST, cache_dir=tmp_path)
    assert [repeats for _, repeats in count_timed_calls[1:]] == [RETIME_REPEATS]
    assert again == profile


def test_the_nodes_asked_for_are_measured_wide_with_the_one_lane_runs(captured):
    gm, inputs = captured
    nodes = schedulable_nodes(gm)
    lstm = [n.name for n in nodes if "lstm" in n.name]
    one_lane = cpu_module.measure_on_cpu_lane(gm, inputs, nodes, 1, 1, 3, 3.0, "test")
    assert set(one_lane.node_ms) == {n.name for n in nodes} and one_lane.wide_ms == {}
    assert one_lane.paired_ms == {}  # no second lane to run beside
    wide = cpu_module.measure_on_cpu_lane(
        gm, inputs, nodes, 1, 1, 3, 3.0, "test", None, ["cpu:0", "cpu:1"], lstm
    )
    assert set(wide.node_ms) == {n.name for n in nodes} and set(wide.wide_ms) == set(lstm)
    assert set(wide.paired_ms) == set(wide.node_ms)
    assert all(math.isfinite(ms) and ms > 0 for ms in wide.wide_ms.values())
    # left to itself, it measures every node wide
    every = cpu_module.measure_on_cpu_lane(
        gm, inputs, nodes, 1, 1, 3, 3.0, "test", None, ["cpu:0", "cpu:1"]
    )
    assert set(every.wide_ms) == {n.name for n in nodes}


def test_a_cached_wide_cost_measured_under_load_is_measured_again(
    captured, tmp_path, count_timed_calls
):
    gm, inputs = captured
    lanes = ["cpu:0", "cpu:1"]
    profile_graph(gm, inputs, lanes, settings=FAST, cache_dir=tmp_path)
    (path,) = [
        p
        for p in tmp_path.glob("*.json")
        if "wide over 2 lanes" in Profile.load(p).device_names["cpu"]
    ]
    # 100x what the layer costs on one lane: wide while a load burst held a core
    cached = Profile.load(path)
    one_lane = profile_graph(gm, inputs, lanes, settings=FAST, cache_dir=tmp_path)
    cached.node_ms["lstm_l0_c0"]["cpu"] = 100 * one_lane.node_ms["lstm_l0_c0"]["cpu:0"]
    cached.save(path)
    count_timed_calls.clear()
    again = profile_graph(gm, inputs, lanes, settings=FAST, cache_dir=tmp_path)
    # re-timed (one lane and wide together), then measured again, and the cache overwritten
    assert [repeats for _, repeats in count_timed_calls] == [RETIME_REPEATS, FAST.profile_repeats]
    wide = Profile.load(path).node_ms["lstm_l0_c0"]["cpu"]
    # inf: its warm-up now finds it too small to be worth measuring wide
    assert wide == math.inf or wide < 10 * again.node_ms["lstm_l0_c0"]["cpu:0"]


@pytest.mark.parametrize(
    "cached_wide, now_wide, holds",
    [
        (0.9, 0.5, False),  # kept off wide by a burst: a re-time would place it wide
        (0.9, 0.85, True),  # no faster wide now either
        (0.5, 0.9, True),  # measured quieter than now: kept
        (0.5, 0.45, True),
    ],
)
def test_a_cached_wide_cost_that_kept_a_node_off_wide_is_stale_if_a_re_time_says_wide(
    monkeypatch, cached_wide, now_wide, holds
):
    # one-lane costs 1.0 ms in the cache and now; what the quick re-time returns, by hand
    now = cpu_module.CpuCosts({"lstm": 1.0, "view": 0.01}, {"lstm": now_wide}, [])
    monkeypatch.setattr(cpu_module, "measure_on_cpu_lane", lambda *args, **kwargs: now)
    cached = {"lstm": 1.0, "view": 0.01}
    wide = {"lstm": cached_wide, "view": math.inf}
    lanes = ["cpu:0", "cpu:1"]
    assert cpu_module.cached_profile_holds(cached, None, (), [], 1, None, wide, lanes) is holds


def test_short_budget_cuts_repeats_and_says_so(captured, tmp_path, count_timed_calls):
    gm, inputs = captured
    settings = ChrionSettings(
        profile_warmup=2, profile_repeats=50, profile_budget_s=1e-4, cpu_threads=1
    )
    profile = profile_graph(gm, inputs, ["cpu"], settings=settings, cache_dir=tmp_path)
    assert [repeats for _, repeats in count_timed_calls] == [50]
    assert any("budget cut repeats from 50 to 3" in note for note in profile.notes)


def test_absent_device_without_recorded_profile_is_a_clear_error(
    captured, tmp_path, monkeypatch, count_timed_calls
):
    gm, inputs = captured
    monkeypatch.setattr(profiler_module, "cuda_present", lambda index: False)
    with pytest.raises(ChrionError, match="no cuda:0 device here.*chrion profile"):
        profile_graph(gm, inputs, ["cpu", "cuda:0"], settings=FAST, cache_dir=tmp_path)
    assert count_timed_calls == []  # refused before measuring the CPU


def recorded_gpu_profile(gm, inputs, cpu_profile):
    """A profile as a GPU machine would record it: every node 10x faster on cuda:0."""
    return Profile(
        devices=["cpu", "cuda:0"],
        device_names={"cpu": "some CPU", "cuda:0": "NVIDIA H100 80GB HBM3"},
        node_ms={
            n: {"cpu": min(c.values()), "cuda:0": min(c.values()) / 10}
            for n, c in cpu_profile.node_ms.items()
        },
        transfer={"cpu->cuda:0": [0.01, 2.0e7], "cuda:0->cpu": [0.012, 1.8e7]},
        graph_hash=graph_hash(gm),
        input_shapes=[list(x.shape) for x in inputs],
        torch_version="2.99",
    )


def test_recorded_profile_plans_for_an_absent_gpu(captured, tmp_path, monkeypatch):
    gm, inputs = captured
    monkeypatch.setattr(profiler_module, "cuda_present", lambda index: False)
    # the CPU costs come back from the cache as they are (a load burst at the re-time would
    # measure them again: tested on its own below)
    monkeypatch.setattr(profiler_module, "cached_profile_holds", lambda *args: True)
    cpu = profile_graph(gm, inputs, ["cpu:0", "cpu:1"], settings=FAST, cache_dir=tmp_path)
    path = tmp_path / "gpu_machine.json"
    recorded_gpu_profile(gm, inputs, cpu).save(path)
    profile = profile_graph(
        gm, inputs, ["cpu:0", "cpu:1", "cuda:0"], settings=FAST, cache_dir=tmp_path, recorded=path
    )
    for name, costs in profile.node_ms.items():
        assert costs["cuda:0"] == pytest.approx(cpu.node_ms[name]["cpu:0"] / 10)
        assert costs["cpu:0"] == cpu.node_ms[name]["cpu:0"]  # this machine's CPU, not the record's
    assert profile.device_names["cuda:0"] == "NVIDIA H100 80GB HBM3"
    assert profile.transfer["cpu:1->cuda:0"] == [0.01, 2.0e7]
    assert profile.transfer["cuda:0->cpu:0"] == [0.012, 1.8e7]
    assert profile.transfer_ms("cpu:0", "cuda:0", 2 * 10**7) == pytest.approx(1.01)


def test_recorded_profile_of_another_graph_is_refused(captured, tmp_path, monkeypatch):
    gm, inputs = captured
    monkeypatch.setattr(profiler_module, "cuda_present", lambda index: False)
    cpu = profile_graph(gm, inputs, ["cpu"], settings=FAST, cache_dir=tmp_path)
    recorded = recorded_gpu_profile(gm, inputs, cpu)
    model = BiGRUWithState().eval()
    other_inputs = model.example_inputs()
    other = capture(model, other_inputs)
    with pytest.raises(PlanError, match="made for graph"):
        profile_graph(other, other_inputs, ["cpu", "cuda:0"], cache_dir=tmp_path, recorded=recorded)


def test_profile_json_round_trip(captured, tmp_path):
    gm, inputs = captured
    profile = profile_graph(gm, inputs, ["cpu"], settings=FAST, cache_dir=tmp_path)
    profile.node_ms["view"]["cuda:0"] = math.inf  # a lane that cannot run a node
    profile.devices.append("cuda:0")
    profile.device_names["cuda:0"] = "gpu"
    profile.transfer["cpu->cuda:0"] = [0.01, 1e7]
    path = tmp_path / "p.json"
    profile.save(path)
    loaded = Profile.load(path)
    assert loaded == profile
    assert loaded.cost_ms("view", "cuda:0") == math.inf
    assert not list(tmp_path.glob(".p.json*"))  # the atomic save left no temporary file


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (lambda d: "not json {", "not a JSON profile"),
        (lambda d: json.dumps({**d, "schema_version": 99}), "schema_version"),
        (lambda d: json.dumps({k: v for k, v in d.items() if k != "node_ms"}), "missing"),
        (lambda d: json.dumps({**d, "node_ms": {"x": {"cpu": -1}}}), "costs -1"),
        (lambda d: json.dumps({**d, "node_ms": {"x": {"tpu": 1}}}), "unknown lane"),
        (lambda d: json.dumps({**d, "transfer": {"cpu->cuda:7": [0, 1]}}), "transfer"),
    ],
)
def test_bad_profile_files_raise_plan_errors(captured, tmp_path, corrupt, match):
    gm, inputs = captured
    profile = profile_graph(gm, inputs, ["cpu"], settings=FAST, cache_dir=tmp_path)
    path = tmp_path / "bad.json"
    path.write_text(corrupt(json.loads(profile.to_json())))
    with pytest.raises(PlanError, match=match):
        Profile.load(path)
    with pytest.raises(PlanError, match="cannot read"):
        Profile.load(tmp_path / "missing.json")


def test_corrupt_cache_entry_is_measured_again(captured, tmp_path, count_timed_calls):
    gm, inputs = captured
    profile_graph(gm, inputs, ["cpu"], settings=FAST, cache_dir=tmp_path)
    for entry in tmp_path.glob("*.json"):
        entry.write_text("{ truncated")
    before = len(count_timed_calls)
    profile_graph(gm, inputs, ["cpu"], settings=FAST, cache_dir=tmp_path)
    assert len(count_timed_calls) > before


def test_bad_lane_is_an_option_error(captured, tmp_path):
    gm, inputs = captured
    with pytest.raises(OptionError, match="tpu"):
        profile_graph(gm, inputs, ["cpu", "tpu:0"], cache_dir=tmp_path)
    with pytest.raises(OptionError, match="once"):
        profile_graph(gm, inputs, ["cpu:0", "cpu:0"], cache_dir=tmp_path)


def test_transfer_line_fit_recovers_latency_and_bandwidth():
    sizes = [4096, 65536, 1 << 20, 1 << 24]
    latency, bytes_per_ms = 0.008, 2.5e7
    ms = [latency + s / bytes_per_ms for s in sizes]
    fitted = fit_line(sizes, ms)
    assert fitted == pytest.approx([latency, bytes_per_ms], rel=1e-6)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_on_a_terminal_unless_silenced(captured, tmp_path, monkeypatch, quiet):
    gm, inputs = captured
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(progress_module, "PROGRESS_DELAY_S", 0.0)
    monkeypatch.setattr(progress_module, "PROGRESS_MIN_STEPS", 1)
    if quiet:
        monkeypatch.setenv("TORCH_CHRION_NO_PROGRESS", "1")
    profile_graph(gm, inputs, ["cpu"], settings=FAST, cache_dir=tmp_path)
    assert ("profiling on cpu" in terminal.getvalue()) is not quiet
    assert ("graph run/s" in terminal.getvalue()) is not quiet  # the CPU lane counts graph runs


def test_cached_cuda_device_profile_round_trips(tmp_path):
    # what the cache holds for a GPU: that device alone, its copies named from the host "cpu"
    profile = Profile(
        devices=["cuda:0"],
        device_names={"cuda:0": "NVIDIA H100"},
        node_ms={"lstm": {"cuda:0": 0.5}},
        transfer={"cpu->cuda:0": [0.012, 5.5e7], "cuda:0->cpu": [0.015, 5.0e7]},
        graph_hash="abc",
        input_shapes=[[8, 1, 16]],
        torch_version=torch.__version__,
    )
    profile.save(tmp_path / "cuda.json")
    assert Profile.load(tmp_path / "cuda.json") == profile


def cpu_profile_with_wide_costs() -> Profile:
    return Profile(
        devices=["cpu:0", "cpu:1"],
        device_names={"cpu:0": "some CPU x1 threads", "cpu:1": "some CPU x1 threads"},
        node_ms={"conv": {"cpu:0": 2.0, "cpu:1": 2.0}, "add": {"cpu:0": 0.01, "cpu:1": 0.01}},
        transfer={},
        graph_hash="abc",
        input_shapes=[[4, 100, 40]],
        torch_version=torch.__version__,
        wide_ms={"conv": 1.1},
        wide_lanes=["cpu:0", "cpu:1"],
    )


def test_wide_costs_round_trip_and_older_profiles_without_them_load(tmp_path):
    profile = cpu_profile_with_wide_costs()
    profile.save(tmp_path / "wide.json")
    assert Profile.load(tmp_path / "wide.json") == profile
    # a profile written before wide costs existed: no fields for them, no wide costs
    data = json.loads(profile.to_json())
    del data["wide_ms"], data["wide_lanes"]
    older = Profile.from_json(json.dumps(data), "older.json")
    assert older.wide_ms == {} and older.wide_lanes == []


def test_paired_costs_round_trip_and_older_profiles_without_them_load(tmp_path):
    profile = cpu_profile_with_wide_costs()
    profile.paired_ms = {"conv": 2.5, "add": 0.01}
    profile.save(tmp_path / "paired.json")
    assert Profile.load(tmp_path / "paired.json") == profile
    data = json.loads(profile.to_json())
    del data["paired_ms"]
    assert Profile.from_json(json.dumps(data), "older.json").paired_ms == {}


def test_a_cached_two_lane_profile_without_paired_costs_is_measured_again(
    captured, tmp_path, count_timed_calls
):
    gm, inputs = captured
    lanes = ["cpu:0", "cpu:1"]
    first = profile_graph(gm, inputs, lanes, settings=FAST, cache_dir=tmp_path)
    for path in tmp_path.rglob("*.json"):  # as written before paired costs existed
        data = json.loads(path.read_text())
        if data.get("paired_ms"):
            del data["paired_ms"]
            path.write_text(json.dumps(data))
    again = profile_graph(gm, inputs, lanes, settings=FAST, cache_dir=tmp_path)
    assert [repeats for _, repeats in count_timed_calls] == [3, 3]  # measured, not re-timed
    assert set(again.paired_ms) == set(first.paired_ms) == set(first.node_ms)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"paired_ms": {"lstm": 1.0}}, "paired cost of node 'lstm', which has no lane costs"),
        ({"paired_ms": {"conv": -1.0}}, "node 'conv' costs -1.0 ms paired"),
        ({"wide_lanes": ["cpu:0"]}, "wide_lanes must be two or more distinct CPU lanes"),
        ({"wide_lanes": ["cpu:0", "cuda:0"]}, "wide_lanes must be two or more distinct CPU"),
        ({"wide_ms": {"lstm": 1.0}}, "wide cost of node 'lstm', which has no lane costs"),
        ({"wide_ms": {"conv": -1.0}}, "node 'conv' costs -1.0 ms wide"),
        ({"wide_lanes": []}, "wide_ms without wide_lanes"),
    ],
)
def test_a_profile_with_bad_wide_costs_is_refused(change, message):
    data = json.loads(cpu_profile_with_wide_costs().to_json())
    data.update(change)
    with pytest.raises(PlanError, match=f"bad.json: {message}"):
        Profile.from_json(json.dumps(data), "bad.json")


def test_call_module_nodes_are_costed_placed_and_run(tmp_path):
    """One definition of a schedulable node (torch_chrion.graph.nodes): a call_module or
    call_method node, which the executor runs as a Python step, is also profiled and placed."""
    from torch_chrion.runtime import PlacedGraph
    from torch_chrion.schedule import make_plan

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(6, 5)

        def forward(self, x):
            return torch.tanh(self.linear(x)).transpose(0, 1)

    model = Net().eval()
    gm = torch.fx.symbolic_trace(model)
    ops = {n.op for n in schedulable_nodes(gm)}
    assert {"call_module", "call_method"} <= ops
    x = torch.randn(4, 6)
    settings = ChrionSettings(
        devices=("cpu:0", "cpu:1"), profile_warmup=1, profile_repeats=3, profile_budget_s=2
    )
    profile = profile_graph(gm, (x,), ["cpu:0", "cpu:1"], settings=settings, cache_dir=tmp_path)
    assert set(profile.node_ms) == {n.name for n in schedulable_nodes(gm)}
    plan = make_plan(gm, profile, settings)
    assert set(plan.placement) == set(profile.node_ms)
    placed = PlacedGraph(gm, plan.placement, plan.order, cpu_threads=1)
    try:
        torch.testing.assert_close(placed(x), model(x))
    finally:
        placed.stop()


def test_the_paired_graph_runs_the_graph_beside_a_copy_with_weights_of_its_own():
    torch.manual_seed(0)
    model = BiGRUWithState().eval()
    inputs = model.example_inputs()
    gm = capture(model, inputs)
    names = [n.name for n in schedulable_nodes(gm)]
    both, copies = cpu_module.side_by_side(gm, names)
    # each node twice, the first copy's step then the second's
    assert list(copies.values())[::2] == list(copies.values())[1::2] == names
    expected = torch.utils._pytree.tree_leaves(gm(*inputs))
    both_inputs = cpu_module.paired_inputs(inputs)
    for got in both(*both_inputs):
        assert all(map(torch.equal, torch.utils._pytree.tree_leaves(got), expected))
    # the same inputs' and weights' values, in memory of their own
    for a, b in zip(both_inputs[: len(inputs)], both_inputs[len(inputs) :], strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    weights = [n.target for n in both.graph.nodes if n.op == "get_attr"]
    first = [w for w in weights if w.startswith("first.")]
    for target in first:
        a, b = both.get_parameter(target), both.get_parameter("second" + target[5:])
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    assert first and len(weights) == 2 * len(first)
