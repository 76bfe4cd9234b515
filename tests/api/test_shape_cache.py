"""The per-shape executable cache drops the least recently used shape, and the process-wide
plan cache is bounded (issue #19, shape churn)."""

import onnx
import torch
from onnx import TensorProto, helper

import torch_chrion
import torch_chrion.module as chrion_module


def _scale_and_add_model() -> onnx.ModelProto:
    """y = x * 2 + 1 over x [seq, 4]: a model whose capture per shape is quick."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["doubled"]),
            helper.make_node("Add", ["doubled", "one"], ["y"]),
        ],
        "scale_and_add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", 4])],
        [
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cycling_40_shapes_twice_recompiles_at_most_8_on_the_second_pass(cache_dir):
    chrion = torch_chrion.load_onnx(
        _scale_and_add_model(),
        example_inputs=(torch.randn(1, 4),),
        devices=["cpu"],
        cache_dir=cache_dir,
    )
    lengths = range(2, 42)  # 40 shapes besides the example's
    with torch.no_grad():
        for length in lengths:
            x = torch.randn(length, 4)
            torch.testing.assert_close(chrion(x), x * 2 + 1)
        first_pass = chrion.stats["captures"]
        for length in lengths:
            x = torch.randn(length, 4)
            torch.testing.assert_close(chrion(x), x * 2 + 1)
    assert first_pass == 41  # the example's, then each of the 40
    assert chrion.stats["captures"] - first_pass <= 8
    assert chrion.stats["profiles"] == 1  # the example's bucket; the others in the background
    assert chrion.wait_for_plans(timeout=120)


def test_the_least_recently_used_shape_is_dropped_first(stacked_lstm_onnx, cache_dir, monkeypatch):
    path, model = stacked_lstm_onnx
    monkeypatch.setattr(chrion_module, "_MAX_SHAPES", 3)
    chrion = torch_chrion.load_onnx(
        path, example_inputs=model.example_inputs(seq=9), devices=["cpu"], cache_dir=cache_dir
    )
    inputs = {n: model.example_inputs(seq=n)[0] for n in (10, 11, 12, 13)}
    with torch.no_grad():
        for n in (10, 11):
            chrion(inputs[n])  # cache: 9 (the example's, never dropped), 10, 11
        chrion(inputs[10])  # 10 used again: 11 is now the least recently used
        chrion(inputs[12])  # drops 11, not 10 (insertion order would drop 10)
        captures = chrion.stats["captures"]
        chrion(inputs[10])
        assert chrion.stats["captures"] == captures  # still cached
        chrion(inputs[11])
        assert chrion.stats["captures"] == captures + 1  # dropped, captured again
        torch.testing.assert_close(chrion(inputs[11]), model(inputs[11]), rtol=1e-4, atol=1e-5)


def test_the_process_plan_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(chrion_module, "_PLANS", {})
    for i in range(chrion_module._MAX_SHARED_PLANS + 10):
        chrion_module._share_plan(("model", i), object())
    assert len(chrion_module._PLANS) == chrion_module._MAX_SHARED_PLANS
    assert chrion_module._shared_plan(("model", 0)) is None  # the oldest went first
    assert chrion_module._shared_plan(("model", 10)) is not None


def test_cli_buckets_prepares_more_shape_buckets(stacked_lstm_onnx, tmp_path, capsys):
    from torch_chrion.cli import main

    path, _ = stacked_lstm_onnx
    plan = tmp_path / "plan.json"
    args = ["plan", str(path), "--shape", "x=8,2,16", "--buckets", "x=40,2,16"]
    code = main([*args, "--devices", "cpu", "--cache-dir", str(tmp_path), "-o", str(plan)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "prepared 1 more shape bucket(s)" in out and "(64, 2, 16)" in out and plan.exists()
