"""capture's explicit pass list: every pass, run in the listed order on a traced graph, keeps
the graph equal to eager PyTorch, and ends at the graph capture returns; the constant-limit
patch that tracing needs is serialised between threads."""

import importlib
import threading

import torch
from models import SpeechConvBiGRU, StackedLSTM
from torch.fx.experimental import proxy_tensor

from torch_chrion.graph import capture
from torch_chrion.graph.hashing import graph_hash
from torch_chrion.ops import ensure_loaded

# the module, not the function torch_chrion.graph re-exports under the same name
capture_module = importlib.import_module("torch_chrion.graph.capture")


def test_each_pass_in_order_keeps_the_graph_equal_to_eager():
    ensure_loaded()
    torch.manual_seed(0)
    for cls in (StackedLSTM, SpeechConvBiGRU):
        model = cls().eval()
        inputs = model.example_inputs()
        with torch.no_grad():
            expected = model(*inputs)
        context = capture_module.PassContext(inputs, torch.device("cpu"), "layer", 2)
        gm = capture_module._trace(model, inputs)
        ran = []
        for name, run_pass in capture_module.PASSES:
            run_pass(gm, context)
            ran.append(name)
            with torch.no_grad():
                torch.testing.assert_close(gm(*inputs), expected, rtol=1e-5, atol=1e-6, msg=name)
        assert ran.index("check_portable") < ran.index("split_recurrent")  # splits read meta
        if cls is StackedLSTM:  # the list is what capture runs
            assert graph_hash(gm) == graph_hash(capture(model, inputs, seq_chunks=2))


def test_constant_limit_patch_is_serialised_between_threads():
    original = proxy_tensor.CONSTANT_NUMEL_LIMIT
    first_inside, release_first = threading.Event(), threading.Event()
    seen_by_second = []

    def first():
        with capture_module._constant_propagation(7):
            first_inside.set()
            release_first.wait(10)

    def second():
        with capture_module._constant_propagation(9):
            seen_by_second.append(proxy_tensor.CONSTANT_NUMEL_LIMIT)

    a = threading.Thread(target=first)
    a.start()
    assert first_inside.wait(10)
    b = threading.Thread(target=second)
    b.start()
    b.join(0.2)  # the second capture must wait for the first, not patch over it
    assert b.is_alive() and not seen_by_second
    release_first.set()
    a.join(10)
    b.join(10)
    assert seen_by_second == [9]
    assert proxy_tensor.CONSTANT_NUMEL_LIMIT == original
