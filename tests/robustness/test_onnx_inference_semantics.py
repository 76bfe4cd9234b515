"""Converted ONNX models compute ONNX's inference semantics (issue 19): BatchNormalization with
its running statistics, Dropout as the identity, InstanceNormalization with the input's own
statistics, whatever mode onnx2torch's modules would default to. onnxruntime is the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx_robustness_models import (
    BatchNormLSTM,
    ConvBatchNormBiLSTM,
    assert_load_onnx_matches_onnxruntime,
    export_torchscript,
    make_model,
    onnxruntime_outputs,
    randomise_batch_norms,
)

from torch_chrion.errors import UnsupportedOperatorError
from torch_chrion.onnx import to_fx

F = TensorProto.FLOAT


def _batch_statistics_differ(model: torch.nn.Module, x: torch.Tensor, want: np.ndarray) -> bool:
    """Whether batch statistics (what a module in training mode uses) give other numbers
    than onnxruntime, i.e. whether the test below could catch a module left training."""
    with torch.no_grad():
        training = model.train()(x)
    model.eval()
    return float(np.abs(training.numpy() - want).max()) > 1e-2


@pytest.mark.parametrize(
    ("cls", "shape", "axes", "other_shape"),
    [
        (BatchNormLSTM, (2, 5, 8), {0: "batch", 1: "time"}, (3, 9, 8)),
        (ConvBatchNormBiLSTM, (2, 8, 7), {0: "batch", 2: "time"}, (1, 8, 12)),
    ],
    ids=["batchnorm_lstm", "conv_batchnorm_bilstm"],
)
def test_batchnorm_export_matches_onnxruntime(tmp_path, cls, shape, axes, other_shape):
    torch.manual_seed(0)
    model = randomise_batch_norms(cls())
    x = torch.randn(*shape)
    proto = export_torchscript(model, x, axes)
    assert _batch_statistics_differ(model, x, onnxruntime_outputs(proto, {"x": x.numpy()})[0])
    assert_load_onnx_matches_onnxruntime(proto, x, [torch.randn(*other_shape)], str(tmp_path))


def test_batchnorm_node_uses_running_statistics():
    rng = np.random.default_rng(0)
    stats = {
        "scale": rng.uniform(0.5, 1.5, 3),
        "bias": rng.uniform(-0.5, 0.5, 3),
        "mean": rng.uniform(-1, 1, 3),
        "var": rng.uniform(0.5, 2.0, 3),
    }
    proto = make_model(
        [helper.make_node("BatchNormalization", ["x", *stats], ["y"])],
        [helper.make_tensor_value_info("x", F, ["n", 3, "t"])],
        [helper.make_tensor_value_info("y", F, ["n", 3, "t"])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in stats.items()],
    )
    x = (rng.standard_normal((4, 3, 6)) * 3 + 2).astype(np.float32)
    want = onnxruntime_outputs(proto, {"x": x})[0]
    gm = to_fx(proto)
    assert not any(module.training for module in gm.modules())
    for mode in (False, True):  # a caller's .train() does not change ONNX semantics
        with torch.no_grad():
            got = gm.train(mode)(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_batchnorm_in_training_mode_is_refused():
    names = ["scale", "bias", "mean", "var"]
    proto = make_model(
        [
            helper.make_node(
                "BatchNormalization",
                ["x", *names],
                ["y", "running_mean", "running_var"],
                training_mode=1,
                name="bn",
            )
        ],
        [helper.make_tensor_value_info("x", F, [2, 3])],
        [
            helper.make_tensor_value_info("y", F, [2, 3]),
            helper.make_tensor_value_info("running_mean", F, [3]),
            helper.make_tensor_value_info("running_var", F, [3]),
        ],
        [numpy_helper.from_array(np.ones(3, np.float32), name) for name in names],
        opset=15,
    )
    with pytest.raises(UnsupportedOperatorError, match=r"'bn'.*training"):
        to_fx(proto)


@pytest.mark.parametrize("opset", [10, 13, 22])
def test_dropout_is_the_identity_with_an_all_true_mask(opset):
    inputs = ["x"] if opset == 10 else ["x", "ratio", "training_mode"]
    initializers = (
        []
        if opset == 10
        else [
            numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
            numpy_helper.from_array(np.array(False), "training_mode"),
        ]
    )
    proto = make_model(
        [
            helper.make_node("Dropout", inputs, ["dropped", "mask"], ratio=0.5)
            if opset == 10
            else helper.make_node("Dropout", inputs, ["dropped", "mask"]),
            helper.make_node("Relu", ["dropped"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", F, [64, 32])],
        [
            helper.make_tensor_value_info("y", F, [64, 32]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, [64, 32]),
        ],
        initializers,
        opset=opset,
    )
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    want = onnxruntime_outputs(proto, {"x": x})
    gm = to_fx(proto)
    for mode in (False, True):  # a caller's .train() does not change ONNX semantics
        with torch.no_grad():
            got = gm.train(mode)(torch.from_numpy(x))
        for ours, theirs in zip(got, want, strict=True):
            assert ours.numpy().dtype == theirs.dtype
            np.testing.assert_array_equal(ours.numpy(), theirs)


def test_training_mode_dropout_is_refused():
    proto = make_model(
        [helper.make_node("Dropout", ["x", "ratio", "training_mode"], ["y"], name="drop")],
        [helper.make_tensor_value_info("x", F, [4, 4])],
        [helper.make_tensor_value_info("y", F, [4, 4])],
        [
            numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
            numpy_helper.from_array(np.array(True), "training_mode"),
        ],
    )
    with pytest.raises(UnsupportedOperatorError, match=r"'drop'.*training_mode"):
        to_fx(proto)


def test_instance_normalization_matches_onnxruntime():
    rng = np.random.default_rng(0)
    proto = make_model(
        [helper.make_node("InstanceNormalization", ["x", "scale", "bias"], ["y"])],
        [helper.make_tensor_value_info("x", F, ["n", 3, "t"])],
        [helper.make_tensor_value_info("y", F, ["n", 3, "t"])],
        [
            numpy_helper.from_array(rng.uniform(0.5, 1.5, 3).astype(np.float32), "scale"),
            numpy_helper.from_array(rng.uniform(-0.5, 0.5, 3).astype(np.float32), "bias"),
        ],
    )
    gm = to_fx(proto)
    assert not any(module.training for module in gm.modules())
    for shape in [(2, 3, 7), (5, 3, 4)]:
        x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
        with torch.no_grad():
            got = gm(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, onnxruntime_outputs(proto, {"x": x})[0], atol=1e-5)
