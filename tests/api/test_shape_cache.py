"""The per-shape executable cache drops the least recently used shape, and the process-wide
plan cache is bounded (issue #19, shape churn)."""

import onnx
import torch
from onnx import TensorProto, helper

import torch_chrion
import torch_chrion.module as chrion_module


def _mean_over_length_model() -> onnx.ModelProto:
    """y = x / seq + 1 over x [seq, 4], the length read from Shape(x): a model whose capture
    per shape is quick, and whose graph holds its length as a constant (no length-generic
    capture, Note [Length-generic captures]), so every length is captured."""
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "zero"], ["seq"]),
            helper.make_node("Cast", ["seq"], ["length"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["x", "length"], ["scaled"]),
            helper.make_node("Add", ["scaled", "one"], ["y"]),
        ],
        "mean_over_length",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", 4])],
        [
            helper.make_tensor("zero", TensorProto.INT64, [], [0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cycling_40_shapes_twice_recompiles_at_most_8_on_the_second_pass(cache_dir):
    chrion = torch_chrion.load_onnx(
        _mean_over_length_model(),
        example_inputs=(torch.randn(1, 4),),
        devices=["cpu"],
        cache_dir=cache_dir,
    )
    lengths = range(2, 42)  # 40 shapes besides the example's
    with torch.no_grad():
        for length in lengths:
            x = torch.randn(length, 4)
            torch.testing.assert_close(chrion(x), x / length + 1)
        first_pass = chrion.stats["captures"]
        for length in lengths:
            x = torch.randn(length, 4)
            torch.testing.assert_close(chrion(x), x / length + 1)
    # the example's, two more to see whether the length is generic (it is not), then each of
    # the 40
    assert first_pass == 43
    assert chrion.stats["captures"] - first_pass <= 8
    assert chrion.stats["profiles"] == 1  # the example's bucket; the others in the background
    assert chrion.wait_for_plans(timeout=120)


def test_the_least_recently_used_shape_is_dropped_first(cache_dir, monkeypatch):
    monkeypatch.setattr(chrion_module, "_MAX_SHAPES", 3)
    chrion = torch_chrion.load_onnx(
        _mean_over_length_model(),
        example_inputs=(torch.randn(9, 4),),
        devices=["cpu"],
        cache_dir=cache_dir,
    )
    inputs = {n: torch.randn(n, 4) for n in (10, 11, 12, 13)}
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
        torch.testing.assert_close(chrion(inputs[11]), inputs[11] / 11 + 1)


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
