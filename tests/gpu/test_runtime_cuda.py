"""The executor with a CUDA lane: CPU + GPU placements against eager, pinned transfers, stream
ordering under concurrent calls, and GPU memory saved by keeping weights on CPU lanes."""

import gc
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from models import BiGRUWithState, Seq2SeqAttention, SpeechConvBiGRU, StackedLSTM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runtime"))
from runtime_helpers import aten_graph, random_order, random_placement, schedulable  # noqa: E402

from torch_chrion.runtime import PlacedGraph  # noqa: E402

TOL = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture(autouse=True)
def exact_cuda_math():
    """No TF32 in cuDNN convolutions / RNNs or cuBLAS: compare with fp32 CPU eager."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize(
    "model_class", [StackedLSTM, BiGRUWithState, Seq2SeqAttention, SpeechConvBiGRU]
)
@pytest.mark.parametrize("lanes", [["cpu", "cuda:0"], ["cpu:0", "cpu:1", "cuda:0"]], ids=len)
def test_cpu_and_cuda_placements_match_eager(model_class, lanes):
    torch.manual_seed(0)
    model = model_class().eval()
    gm = aten_graph(model, *model.example_inputs())
    for seed in range(3):
        module = PlacedGraph(gm, random_placement(gm, lanes, seed), random_order(gm, seed))
        inputs = model.example_inputs()
        with torch.no_grad():
            expected = model(*inputs)
        out = module(*inputs)  # traced on the CPU: outputs come back on the CPU
        torch.testing.assert_close(out, expected, **TOL)
        cuda_inputs = tuple(x.cuda() for x in inputs)  # inputs already on the GPU work too
        torch.testing.assert_close(module(*cuda_inputs), expected, **TOL)
        module.stop()


def test_transfers_are_pinned_and_counted():
    torch.manual_seed(0)
    model = StackedLSTM().eval()
    gm = aten_graph(model, *model.example_inputs())
    nodes = schedulable(gm)
    # alternate devices so that data crosses both ways several times
    placement = {n.name: ("cuda:0" if i % 2 else "cpu") for i, n in enumerate(nodes)}
    module = PlacedGraph(gm, placement)
    x = model.example_inputs()[0]
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x), **TOL)
    stats = module.transfer_stats()
    assert stats["host_to_device"] > 0 and stats["device_to_host"] > 0
    assert stats["pinned"] == stats["host_to_device"] + stats["device_to_host"]
    assert stats["bytes"] > 0


def test_outputs_on_the_gpu_are_ordered_with_the_callers_stream():
    torch.manual_seed(0)
    model = StackedLSTM(features=32, hidden=64).eval().cuda()
    inputs = tuple(x.cuda() for x in model.example_inputs(seq=16, batch=8))
    gm = aten_graph(model, *inputs)  # traced on CUDA: outputs stay on the GPU
    # the LSTM on the CPU, its head on the GPU
    placement = {n.name: "cpu" if "chrion" in str(n.target) else "cuda:0" for n in schedulable(gm)}
    module = PlacedGraph(gm, placement)
    side = torch.cuda.Stream()
    with torch.no_grad(), torch.cuda.stream(side):  # the caller works on a non-default stream
        expected = model(*inputs)
        for _ in range(5):
            out = module(*inputs)
            checks = [o.double().sum() for o in out]  # read on the caller's stream at once
        torch.testing.assert_close(out, expected, **TOL)
    torch.cuda.synchronize()
    assert all(o.device.type == "cuda" for o in out)
    assert [c.item() for c in checks] == pytest.approx(
        [e.double().sum().item() for e in expected], rel=1e-4
    )


def test_concurrent_calls_with_a_cuda_lane_equal_serial_results():
    torch.manual_seed(0)
    model = SpeechConvBiGRU().eval()
    gm = aten_graph(model, *model.example_inputs())
    module = PlacedGraph(gm, random_placement(gm, ["cpu:0", "cpu:1", "cuda:0"], 5))
    inputs = [model.example_inputs() for _ in range(8)]
    assert mismatches_from_threads(module, inputs, [module(*x) for x in inputs]) == [0] * 6


def mismatches_from_threads(module, inputs, expected):
    """Per thread of 6, how many of its 50 calls (inputs in turn) differed from ``expected``."""

    def worker(t):
        bad = 0
        for i in range(50):
            k = (t + i) % len(inputs)
            bad += not torch.allclose(module(*inputs[k]), expected[k], **TOL)
        return bad

    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(worker, range(6)))


def _gpu_bytes_held(model, placement_of):
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    gm = aten_graph(model, *model.example_inputs(seq=4, batch=2))
    module = PlacedGraph(gm, {n.name: placement_of(n) for n in schedulable(gm)})
    x = model.example_inputs(seq=4, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(module(*x), model(*x), **TOL)
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - before
    module.stop()
    del module, gm
    gc.collect()
    return held


def test_weights_on_cpu_lanes_use_less_gpu_memory_than_gpu_only():
    torch.manual_seed(0)
    model = StackedLSTM(features=64, hidden=512, layers=3, classes=8).eval()  # ~ 20 MB LSTM
    lstm_bytes = sum(p.numel() * p.element_size() for p in model.lstm.parameters())
    gpu_only = _gpu_bytes_held(model, lambda n: "cuda:0")
    # the LSTM on the CPU, everything else on the GPU: the LSTM's weights never reach the GPU
    mixed = _gpu_bytes_held(model, lambda n: "cpu" if "chrion" in str(n.target) else "cuda:0")
    assert gpu_only >= lstm_bytes
    assert mixed < gpu_only - 0.9 * lstm_bytes


def test_two_lanes_on_one_gpu_are_refused():
    from torch_chrion.errors import OptionError

    gm = aten_graph(lambda x: torch.sin(x).cos(), torch.randn(3))
    names = [n.name for n in schedulable(gm)]
    with pytest.raises(OptionError, match="both on cuda:0: use one lane per GPU"):
        PlacedGraph(gm, {names[0]: "cuda", names[1]: "cuda:0"})


def test_host_consumers_of_gpu_values_wait_for_the_copy_to_land():
    """A long GPU chain, then its value read on the CPU: the copy to the host is issued by the
    GPU lane and the CPU step runs only once the data has landed (else it reads garbage)."""

    def f(x):
        for _ in range(50):
            x = torch.tanh(x @ x.T / x.shape[0])
        return x.sum(1)

    x = torch.randn(512, 512)
    gm = aten_graph(f, x)
    nodes = schedulable(gm)
    placement = {n.name: ("cpu" if n is nodes[-1] else "cuda:0") for n in nodes}
    module = PlacedGraph(gm, placement)
    for _ in range(5):  # TF32 off: the autouse fixture
        torch.testing.assert_close(module(x), f(x.cuda()).cpu(), **TOL)
    assert module.transfer_stats()["in_flight"] == 0


@pytest.mark.parametrize(
    "model_class", [StackedLSTM, BiGRUWithState, Seq2SeqAttention, SpeechConvBiGRU]
)
@pytest.mark.parametrize("lanes", [["cuda:0"], ["cpu", "cuda:0"]], ids=len)
def test_cuda_graph_segments_match_eager_on_every_call(model_class, lanes):
    """Note [Device graph segments]: the first call of a shape runs eagerly, the second captures
    and replays, later calls replay; new inputs every call."""
    torch.manual_seed(0)
    model = model_class().eval()
    gm = aten_graph(model, *model.example_inputs())
    module = PlacedGraph(
        gm, random_placement(gm, lanes, 2), random_order(gm, 2), device_graphs=True
    )
    for _ in range(4):
        inputs = model.example_inputs()
        with torch.no_grad():
            expected = model(*inputs)
        torch.testing.assert_close(module(*inputs), expected, **TOL)
    segments = module.device_graphs()
    assert segments
    for s in segments:
        assert (s["failure"], s["captures"], s["replays"]) == (None, 1, 3), s
    module.stop()


def test_concurrent_calls_replaying_cuda_graphs_equal_serial_results():
    torch.manual_seed(0)
    model = SpeechConvBiGRU().eval()
    gm = aten_graph(model, *model.example_inputs())
    module = PlacedGraph(
        gm, random_placement(gm, ["cpu:0", "cpu:1", "cuda:0"], 5), device_graphs=True
    )
    inputs = [model.example_inputs() for _ in range(8)]
    with torch.no_grad():
        eager = [model(*x) for x in inputs]
    assert mismatches_from_threads(module, inputs, eager) == [0] * 6
    assert all(s["failure"] is None and s["replays"] > 0 for s in module.device_graphs())


def test_torch_compile_on_the_gpu_replays_cuda_graphs_by_default():
    import torch_chrion  # noqa: F401  registers the backend

    torch.manual_seed(0)
    model = StackedLSTM().eval()
    compiled = torch.compile(model, backend="chrion", options={"devices": ["cuda:0"]})
    from torch_chrion.dynamo import compiled_modules

    for _ in range(4):
        (x,) = model.example_inputs()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), **TOL)
    segments = compiled_modules()[-1].device_graphs()
    assert segments and all(s["failure"] is None and s["replays"] >= 2 for s in segments)
