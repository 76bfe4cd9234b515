"""A call at a new length, through torch.compile and through load_onnx, neither captures,
profiles nor schedules on the caller's thread: those stages run at compile time or on the
background planner (counted by wrapping each stage's own function), and the output equals
eager PyTorch."""

import threading

import pytest
import torch
import torch._dynamo
from models import SpeechBiLSTM
from torch._dynamo.utils import counters

import torch_chrion
import torch_chrion.dynamo as chrion_dynamo
import torch_chrion.graph
import torch_chrion.profile
import torch_chrion.schedule

# new lengths in the buckets already planned (64, 128) and in new ones (16, 256, 512)
NEW_LENGTHS = (41, 57, 100, 127, 13, 200, 230, 300, 77)


@pytest.fixture
def stage_threads(monkeypatch):
    """The names of the threads each stage ran on: capture (graph.capture, or Dynamo's
    capture of a graph), profiling (profile_graph) and scheduling (make_plan)."""
    threads: dict[str, list[str]] = {"capture": [], "profile": [], "schedule": []}

    def spy(stage, module, name):
        real = getattr(module, name)

        def wrapped(*args, **kwargs):
            threads[stage].append(threading.current_thread().name)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapped)

    spy("capture", torch_chrion.graph, "capture")
    spy("capture", chrion_dynamo, "capture_dynamo_graph")
    spy("profile", torch_chrion.profile, "profile_graph")
    spy("schedule", torch_chrion.schedule, "make_plan")
    return threads


def _serve_new_lengths(compiled, model, module, threads):
    """Every NEW_LENGTHS length once on this thread, each equal to eager; then the stages
    that ran on this thread (none expected) and those the background ran."""
    for stage in threads.values():
        stage.clear()
    caller = threading.current_thread().name
    with torch.no_grad():
        for length in NEW_LENGTHS:
            x = torch.randn(1, length, 40)
            torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=1e-5)
    on_caller = {stage: names.count(caller) for stage, names in threads.items()}
    assert module.wait_for_plans(timeout=300)
    in_background = {stage: len(names) - on_caller[stage] for stage, names in threads.items()}
    return on_caller, in_background


def test_torch_compile_new_lengths_run_without_capture_profile_or_schedule(stage_threads):
    torch.manual_seed(0)
    model = SpeechBiLSTM().eval()
    torch._dynamo.reset()
    chrion_dynamo.install_compile_hooks()
    counters.clear()
    compiled = torch.compile(model, backend="chrion")
    with torch.no_grad():  # Dynamo's static graph, then its dynamic one (compile time)
        compiled(torch.randn(1, 50, 40))
        compiled(torch.randn(1, 120, 40))
    module = chrion_dynamo.compiled_modules()[-1]
    assert module.wait_for_plans(timeout=300)
    on_caller, in_background = _serve_new_lengths(compiled, model, module, stage_threads)
    assert on_caller == {"capture": 0, "profile": 0, "schedule": 0}
    assert in_background["profile"] >= 3  # the new buckets were profiled, off the request path
    assert counters["stats"]["unique_graphs"] == 2  # no Dynamo recompile per length


def test_load_onnx_new_lengths_run_without_capture_profile_or_schedule(tmp_path, stage_threads):
    torch.manual_seed(0)
    model = SpeechBiLSTM().eval()
    path = model.export_onnx(str(tmp_path / "speech.onnx"))
    chrion = torch_chrion.load_onnx(
        path, example_inputs=model.example_inputs(seq=50), cache_dir=str(tmp_path / "cache")
    )
    assert chrion.wait_for_plans(timeout=300)
    captures = chrion.stats["captures"]
    on_caller, in_background = _serve_new_lengths(chrion, model, chrion, stage_threads)
    assert on_caller == {"capture": 0, "profile": 0, "schedule": 0}
    assert in_background["profile"] >= 3
    # the example's capture serves every length (Note [Length-generic captures]): no length
    # was captured again, in the background either
    assert chrion.stats["captures"] == captures and in_background["capture"] == 0
