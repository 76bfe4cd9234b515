"""load_onnx end to end: outputs equal to onnxruntime and eager, plans saved and reused,
shape buckets, clear errors."""

import os
import subprocess
import sys

import onnxruntime
import pytest
import torch

import torch_chrion
from torch_chrion.errors import ModelError, OptionError, PlanError


def _onnxruntime(path, x):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


@pytest.mark.parametrize("devices", [["cpu"], ["cpu:0", "cpu:1"]])
def test_load_onnx_matches_onnxruntime_and_eager(stacked_lstm_onnx, cache_dir, devices):
    path, model = stacked_lstm_onnx
    x = model.example_inputs()[0]
    chrion = torch_chrion.load_onnx(path, example_inputs=(x,), devices=devices, cache_dir=cache_dir)
    with torch.no_grad():
        out = chrion(x)
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, _onnxruntime(path, x), rtol=1e-4, atol=1e-5)
    plan = chrion.plan
    assert set(plan.placement.values()) <= set(devices)
    assert plan.predicted_ms > 0 and set(plan.device_bytes) <= set(devices)


def test_new_lengths_in_a_bucket_reuse_its_plan(stacked_lstm_onnx, cache_dir):
    path, model = stacked_lstm_onnx
    chrion = torch_chrion.load_onnx(
        path, example_inputs=model.example_inputs(seq=9), devices=["cpu"], cache_dir=cache_dir
    )
    assert chrion.profiles_made == 1
    with torch.no_grad():
        for seq in (9, 12, 16, 20):
            x = model.example_inputs(seq=seq)[0]
            torch.testing.assert_close(chrion(x), model(x), rtol=1e-4, atol=1e-5)
    # 9, 12 and 16 share the bucket of 16; 20 is in 32's, which ran on the bucket of 16's plan
    # while its own was profiled in the background (never on the request path)
    assert chrion.wait_for_plans(timeout=120)
    assert chrion.stats["profiles"] == 1 and chrion.stats["background_profiles"] == 1
    assert chrion.stats["borrowed_plans"] == 1 and chrion.stats["plan_swaps"] == 1
    with torch.no_grad():
        x = model.example_inputs(seq=20)[0]
        torch.testing.assert_close(chrion(x), model(x), rtol=1e-4, atol=1e-5)


SAVE = """
import sys, numpy as np, torch, torch_chrion
torch.manual_seed(0)
x = torch.randn(8, 2, 16)
m = torch_chrion.load_onnx(sys.argv[1], example_inputs=(x,), devices=["cpu:0", "cpu:1"], cache_dir=sys.argv[3])
m.plan.save(sys.argv[2])
with torch.no_grad():
    np.save(sys.argv[2] + ".npy", m(x).numpy())
"""

LOAD = """
import sys, numpy as np, torch, torch_chrion, torch_chrion.profile as p
def no_profiling(*a, **k):
    raise AssertionError("profiled although a plan was given")
p.profile_graph = no_profiling
torch.manual_seed(0)
x = torch.randn(8, 2, 16)
m = torch_chrion.load_onnx(sys.argv[1], example_inputs=(x,), plan=sys.argv[2], devices=["cpu:0", "cpu:1"])
with torch.no_grad():
    np.testing.assert_array_equal(m(x).numpy(), np.load(sys.argv[2] + ".npy"))
print(sorted(set(m.plan.placement.values())))
"""


def test_saved_plan_runs_in_a_new_process_without_profiling(stacked_lstm_onnx, tmp_path):
    path, _ = stacked_lstm_onnx
    plan = tmp_path / "plan.json"
    cache = str(tmp_path / "cache")
    for script, args in ((SAVE, [str(path), str(plan), cache]), (LOAD, [str(path), str(plan)])):
        result = subprocess.run(
            [sys.executable, "-c", script, *args],
            capture_output=True,
            text=True,
            timeout=600,
            env=os.environ.copy(),
        )
        assert result.returncode == 0, result.stderr[-3000:]
    loaded = torch_chrion.Plan.load(plan)
    assert loaded.placement and loaded.order


def test_plan_for_another_model_is_refused(stacked_lstm_onnx, tmp_path, cache_dir):
    path, model = stacked_lstm_onnx
    chrion = torch_chrion.load_onnx(
        path, example_inputs=model.example_inputs(), devices=["cpu"], cache_dir=cache_dir
    )
    plan = chrion.plan
    plan.placement["no_such_node"] = "cpu"
    plan.save(tmp_path / "bad.json")
    with pytest.raises(PlanError, match="no_such_node"):
        torch_chrion.load_onnx(
            path,
            example_inputs=model.example_inputs(),
            devices=["cpu"],
            plan=str(tmp_path / "bad.json"),
        )


def test_symbolic_dimensions_need_example_inputs(stacked_lstm_onnx):
    path, _ = stacked_lstm_onnx
    with pytest.raises(ModelError, match="seq"):
        torch_chrion.load_onnx(path)


def test_bad_options_are_clear_errors(stacked_lstm_onnx):
    path, model = stacked_lstm_onnx
    with pytest.raises(OptionError, match="slo_ms"):
        torch_chrion.load_onnx(path, example_inputs=model.example_inputs(), objective="memory")
    with pytest.raises(OptionError, match="granularity"):
        torch_chrion.load_onnx(path, example_inputs=model.example_inputs(), granularty="op")


def test_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="nope.onnx"):
        torch_chrion.load_onnx(tmp_path / "nope.onnx", example_inputs=(torch.zeros(1),))


def test_a_language_model_head_runs_as_one_dense_product_equal_to_onnxruntime(tmp_path):
    """The vocabulary projection (ONNX MatMul + Add against initializers) becomes one
    chrion::dense node with its bias, which the CPU kernel runs against its packed panels
    (tests/kernels/test_packed_products.py), and the model still equals onnxruntime and eager."""
    from models import LSTMLanguageModel

    torch.manual_seed(0)
    model = LSTMLanguageModel(vocab=2000, width=128).eval()
    (tokens,) = model.example_inputs()  # 35 x 4: a 140 x 128 x 2000 product
    path = tmp_path / "lm.onnx"
    torch.onnx.export(
        model, (tokens,), str(path), dynamo=False, opset_version=17, input_names=["x"]
    )
    chrion = torch_chrion.load_onnx(path, example_inputs=(tokens,), devices=["cpu:0", "cpu:1"])
    graph = chrion.captured_graph()
    (dense,) = [n for n in graph.graph.nodes if n.target is torch.ops.chrion.dense.default]
    assert dense.args[2] is not None
    assert not [n for n in graph.graph.nodes if n.target is torch.ops.aten.add.Tensor]
    with torch.no_grad():
        out = chrion(tokens)
        torch.testing.assert_close(out, model(tokens), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, _onnxruntime(path, tokens), rtol=1e-4, atol=1e-4)


def test_a_gemm_layer_runs_as_a_dense_product_on_two_lanes_equal_to_onnxruntime(tmp_path):
    """nn.Linear on a 2-D input exports as ONNX Gemm(transB=1): the converted graph reads the
    weight through a transpose, which becomes the dense node's own weight attribute. With two
    CPU lanes the profiler times nodes side by side on a copy of the graph, which once refused
    that attribute (a view of a parameter that requires grad cannot be deep-copied)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Tanh()).eval()
    x = torch.randn(3, 256)
    path = tmp_path / "gemm.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
    chrion = torch_chrion.load_onnx(path, example_inputs=(x,), devices=["cpu:0", "cpu:1"])
    graph = chrion.captured_graph()
    assert [n for n in graph.graph.nodes if n.target is torch.ops.chrion.dense.default]
    with torch.no_grad():
        out = chrion(x)
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, _onnxruntime(path, x), rtol=1e-5, atol=1e-5)
