"""Wide steps (Note [Chrion wide steps]): a node that holds several CPU lanes runs with all of
their intra-op threads while they run nothing else; outputs against eager PyTorch, the hold
against the executor's own trace."""

import threading

import pytest
import torch
from models import BatchFirstLSTM, SpeechConvBiGRU
from runtime_helpers import aten_graph, random_order, schedulable

from torch_chrion.errors import PlanError
from torch_chrion.runtime import PlacedGraph

LANES = ["cpu:0", "cpu:1"]


def branches(x, w1, w2):
    a = torch.relu(x @ w1)  # mm -> relu on one branch
    b = torch.tanh(x @ w2)  # mm -> tanh on the other
    c = a @ w2.t() + b @ w1.t()
    return torch.softmax(c, -1), a.sum(0)


def inputs():
    return torch.randn(64, 48), torch.randn(48, 96), torch.randn(48, 96)


def wide_of(gm, targets):
    """Every node whose op is among ``targets`` wide over both lanes, led by cpu:0."""
    return {n.name: list(LANES) for n in schedulable(gm) if n.target in targets}


@pytest.mark.parametrize("seed", range(4))
def test_wide_steps_equal_eager_in_any_plan_order(seed):
    gm = aten_graph(branches, *inputs())
    nodes = schedulable(gm)
    wide = wide_of(gm, {torch.ops.aten.mm.default})
    assert len(wide) == 4
    # the wide nodes' placed lane is the first they hold; the rest alternate
    placement = {n.name: "cpu:0" if n.name in wide else LANES[k % 2] for k, n in enumerate(nodes)}
    module = PlacedGraph(gm, placement, random_order(gm, seed), wide=wide)
    try:
        assert module.lanes == ["cpu:0", "cpu:1", "cpu:0+cpu:1"]
        for _ in range(5):
            args = inputs()
            torch.testing.assert_close(module(*args), branches(*args))
    finally:
        module.stop()


def test_the_lanes_a_wide_step_holds_run_nothing_while_it_runs():
    gm = aten_graph(branches, *inputs())
    nodes = schedulable(gm)
    wide = wide_of(gm, {torch.ops.aten.mm.default})
    placement = {n.name: LANES[k % 2] for k, n in enumerate(nodes)}
    placement.update(dict.fromkeys(wide, "cpu:0"))
    module = PlacedGraph(gm, placement, wide=wide)
    module.enable_trace()
    try:
        for _ in range(20):
            module(*inputs())
            events = module.last_trace()
            held = [e for e in events if e.lane == "cpu:0+cpu:1"]
            assert sorted(e.node for e in held) == sorted(wide)
            for w in held:
                for e in events:
                    if e.lane in LANES:
                        assert e.end_us <= w.start_us or e.start_us >= w.end_us, (e, w)
    finally:
        module.stop()


def test_wide_convolutions_and_recurrent_layers_equal_eager():
    """A speech model whose convolution, recurrent layers and head are wide: ATen's convolution
    and GEMM run with both lanes' threads, and so does the chrion CPU recurrent kernel."""
    torch.manual_seed(0)
    model = SpeechConvBiGRU(features=20, channels=32, hidden=24).eval()
    gm = aten_graph(model, *model.example_inputs(frames=16, batch=2))
    heavy = {"aten.convolution.default", "chrion.gru.default", "aten.addmm.default"}
    nodes = schedulable(gm)
    wide = {n.name: list(LANES) for n in nodes if str(n.target) in heavy}
    assert len(wide) == 4  # the convolution, both directions' GRU, the head
    placement = {n.name: "cpu:0" if n.name in wide else LANES[k % 2] for k, n in enumerate(nodes)}
    module = PlacedGraph(gm, placement, wide=wide)
    try:
        for _ in range(3):
            x = model.example_inputs(frames=16, batch=2)
            with torch.no_grad():
                torch.testing.assert_close(module(*x), model(*x), rtol=1e-5, atol=1e-6)
    finally:
        module.stop()


def test_a_graph_wide_end_to_end_equals_one_lane_bit_for_bit():
    """A batch-1 LSTM and the views around it all wide (as plan.join_wide_neighbours places them):
    every step on the wide thread, the layers split over both lanes' threads; the chrion kernel
    is bit-identical for every thread count, the views compute nothing."""
    torch.manual_seed(0)
    model = BatchFirstLSTM().eval()
    gm = aten_graph(model, torch.randn(1, 32, 64))
    names = [n.name for n in schedulable(gm)]
    assert sum(str(n.target) == "chrion.lstm.default" for n in schedulable(gm)) == 2
    wide = PlacedGraph(gm, dict.fromkeys(names, "cpu:0"), wide=dict.fromkeys(names, LANES))
    one_lane = PlacedGraph(gm, dict.fromkeys(names, "cpu:0"), cpu_threads=1)
    wide.enable_trace()
    try:
        for _ in range(3):
            x = torch.randn(1, 32, 64)
            got = wide(x)
            assert {e.lane for e in wide.last_trace()} == {"cpu:0+cpu:1"}
            assert torch.equal(got, one_lane(x))
            with torch.no_grad():
                torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-6)
    finally:
        wide.stop()
        one_lane.stop()


def threads_here(x):
    """The intra-op thread count of the thread running this step, as a tensor."""
    return x.new_full((1,), float(torch.get_num_threads()))


def threads_of_a_new_thread() -> int:
    """The intra-op thread count a thread started now begins with (ATen's process default)."""
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_a_wide_step_runs_with_the_threads_of_every_lane_it_holds():
    caller, newcomer = torch.get_num_threads(), threads_of_a_new_thread()
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    narrow = graph.call_function(threads_here, (x,))
    wide = graph.call_function(threads_here, (x,))
    graph.output((narrow, wide))
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    names = [n.name for n in gm.graph.nodes if n.op == "call_function"]
    module = PlacedGraph(
        gm,
        {names[0]: "cpu:1", names[1]: "cpu:0"},
        cpu_threads=1,
        wide={names[1]: list(LANES)},
    )
    try:
        one, both = module(torch.zeros(1))
        assert one.item() == 1.0 and both.item() == 2.0
        # neither the caller's count nor the one later threads inherit has changed
        assert torch.get_num_threads() == caller
        assert threads_of_a_new_thread() == newcomer
    finally:
        module.stop()


@pytest.mark.parametrize(
    "held, message",
    [
        (["cpu:1", "cpu:0"], "its own \\('cpu:0'\\) first"),
        (["cpu:0"], "two or more distinct lanes"),
        (["cpu:0", "fake:0"], "'fake:0', which is not a CPU lane"),
    ],
)
def test_bad_wide_nodes_are_refused(held, message):
    gm = aten_graph(branches, *inputs())
    placement = {n.name: "cpu:0" for n in schedulable(gm)}
    name = next(iter(placement))
    with pytest.raises(PlanError, match=message):
        PlacedGraph(gm, placement, wide={name: held})


def thread_here(x):
    """The thread running this step and its intra-op thread count, as a tensor."""
    return torch.tensor([threading.get_ident(), torch.get_num_threads()], dtype=torch.int64)


def graph_of_narrow_and_wide_steps():
    """Two narrow steps, one per lane, and a wide one between them, each reporting its thread."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    before = graph.call_function(thread_here, (x,))
    wide = graph.call_function(thread_here, (graph.call_function(torch.add, (x, before)),))
    after = graph.call_function(thread_here, (graph.call_function(torch.add, (x, wide)),))
    graph.output((before, wide, after))
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    nodes = [n.name for n in gm.graph.nodes if n.op == "call_function"]
    placement = dict(zip(nodes, ["cpu:0", "cpu:0", "cpu:0", "cpu:1", "cpu:1"], strict=True))
    return PlacedGraph(gm, placement, cpu_threads=1, wide={nodes[2]: list(LANES)})


def call_on_a_new_thread(module, x, threads: int | None = None):
    """``module(x)`` on a thread of its own with ``threads`` intra-op threads (torch's count
    for that thread alone: the process default is put back before the thread calls)."""
    got = {}

    def call():
        if threads is not None:
            default = threads_of_a_new_thread()
            torch.get_num_threads()  # ATen sets a thread's count lazily, on first use: now
            torch.set_num_threads(threads)  # also the default later threads inherit: put back
            restore = threading.Thread(target=torch.set_num_threads, args=(default,))
            restore.start()
            restore.join()
        got["ident"] = threading.get_ident()
        got["out"] = module(x)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    return got["ident"], got["out"]


def test_the_caller_runs_a_wide_step_itself_when_it_has_the_steps_threads():
    """Note [Chrion caller lane]: a caller whose intra-op thread count is the wide step's runs
    that step on its own thread (in its own OpenMP team: no second team beside it); a caller
    with another count leaves it to the wide lane's thread, which still runs it with both
    lanes' threads. The narrow steps run on their lanes' threads either way."""
    module = graph_of_narrow_and_wide_steps()
    default = threads_of_a_new_thread()
    try:
        for threads in (None, 2, 1, 3):
            ident, (before, wide, after) = call_on_a_new_thread(module, torch.zeros(2), threads)
            assert wide[1].item() == 2  # both lanes' threads
            assert before[1].item() == after[1].item() == 1
            assert ident not in (before[0].item(), after[0].item())  # the lanes' own threads
            callers = default if threads is None else threads
            assert (wide[0].item() == ident) == (callers == 2), (threads, default)
        assert threads_of_a_new_thread() == default
    finally:
        module.stop()
