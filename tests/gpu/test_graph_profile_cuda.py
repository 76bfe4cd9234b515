"""The aten graph captured on CPU runs on CUDA once its constants move there, equal to eager
PyTorch on CUDA; profile_graph measures CUDA nodes with events and pinned copies."""

import copy
import math

import pytest
import torch
from models import BiGRUWithState, Seq2SeqAttention, SpeechConvBiGRU, StackedLSTM, UnrolledLSTMCell

from torch_chrion.graph import capture
from torch_chrion.profile import Profile, profile_graph
from torch_chrion.profile import profiler as profiler_module
from torch_chrion.settings import ChrionSettings

MODELS = [StackedLSTM, BiGRUWithState, Seq2SeqAttention, SpeechConvBiGRU, UnrolledLSTMCell]


@pytest.fixture(autouse=True)
def exact_cuda_math():
    # cuDNN RNNs may use TF32 by default; the comparison is about the graph, not the precision
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def on_cuda(value):
    return tuple(v.cuda() for v in value)


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("granularity,chunks", [("op", 1), ("layer", 1), ("layer", 3)])
def test_cpu_captured_graph_runs_on_cuda_like_eager(cls, granularity, chunks):
    torch.manual_seed(0)
    model = cls().eval()
    inputs = model.example_inputs()
    gm = capture(model, inputs, granularity=granularity, seq_chunks=chunks)
    gpu_graph = copy.deepcopy(gm).cuda()
    gpu_model = copy.deepcopy(model).cuda()
    with torch.no_grad():
        expected = gpu_model(*on_cuda(inputs))
        got = gpu_graph(*on_cuda(inputs))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_profile_on_cpu_and_cuda(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = StackedLSTM(hidden=128).eval()
    inputs = model.example_inputs(seq=32)
    gm = capture(model, inputs, seq_chunks=2)
    settings = ChrionSettings(profile_warmup=2, profile_repeats=5)
    profile = profile_graph(gm, inputs, ["cpu", "cuda:0"], settings=settings, cache_dir=tmp_path)
    for name, costs in profile.node_ms.items():
        assert math.isfinite(costs["cpu"]) and costs["cpu"] > 0, name
        assert math.isfinite(costs["cuda:0"]) and costs["cuda:0"] > 0, name
    assert profile.device_names["cuda:0"] == torch.cuda.get_device_name(0)
    for key in ("cpu->cuda:0", "cuda:0->cpu"):
        latency_ms, bytes_per_ms = profile.transfer[key]
        assert 0 <= latency_ms < 1.0
        assert 1e5 < bytes_per_ms < 1e9  # between 0.1 and 1000 GB/s
    # recorded here, it plans for a machine without the GPU
    path = tmp_path / "recorded.json"
    profile.save(path)
    monkeypatch.setattr(profiler_module, "cuda_present", lambda index: False)
    elsewhere = profile_graph(
        gm,
        inputs,
        ["cpu", "cuda:0"],
        settings=settings,
        cache_dir=tmp_path / "other",
        recorded=Profile.load(path),
    )
    assert {n: c["cuda:0"] for n, c in elsewhere.node_ms.items()} == {
        n: c["cuda:0"] for n, c in profile.node_ms.items()
    }
    assert elsewhere.transfer == profile.transfer
