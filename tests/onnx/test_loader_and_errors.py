"""load_model / to_fx: paths, bytes, ModelProto, external data, and a torch_chrion error
naming what is wrong for every kind of bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from chrion_onnx_testing import assert_same_as_onnxruntime, make_model, tensor_info
from onnx import TensorProto, helper, numpy_helper

from torch_chrion.errors import ChrionError, ModelError, UnsupportedOperatorError
from torch_chrion.onnx import load_model, to_fx
from torch_chrion.onnx.opsets import default_opset

F = TensorProto.FLOAT


def matmul_add_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"], name="matmul"),
        helper.make_node("Add", ["xw", "b"], ["y"], name="add"),
    ]
    return make_model(
        nodes, [tensor_info("x", F, [3, 64])], [tensor_info("y", F, [3, 32])], [weight, bias]
    )


def expected(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return x @ weights["w"] + weights["b"]


@pytest.mark.parametrize("form", ["path", "str", "bytes", "proto"])
def test_load_from_every_form(tmp_path, form):
    model = matmul_add_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    source = {"path": path, "str": str(path), "bytes": model.SerializeToString(), "proto": model}[
        form
    ]
    before = model.SerializeToString()
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    got = to_fx(source)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected(model, x), rtol=1e-5, atol=1e-5)
    assert model.SerializeToString() == before  # the caller's proto is not touched


def test_external_data_is_read_relative_to_the_file(tmp_path, monkeypatch):
    model = matmul_add_model()
    x = np.ones((3, 64), np.float32)
    reference = expected(model, x)  # onnx.save below moves the weights out of `model`
    folder = tmp_path / "model_dir"
    folder.mkdir()
    onnx.save(
        model,
        folder / "m.onnx",
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (folder / "weights.bin").stat().st_size >= 64 * 32 * 4
    monkeypatch.chdir(tmp_path)  # not the model's folder
    got = to_fx(folder / "m.onnx")(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)
    loaded = load_model(str(folder / "m.onnx"))
    assert all(init.raw_data for init in loaded.graph.initializer)


def test_missing_external_data_names_the_file(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    onnx.save(
        matmul_add_model(),
        folder / "m.onnx",
        save_as_external_data=True,
        location="w.bin",
        size_threshold=0,
    )
    (folder / "w.bin").unlink()
    with pytest.raises(ModelError, match="external data"):
        load_model(folder / "m.onnx")


def test_unreadable_inputs_raise_model_error(tmp_path):
    with pytest.raises(ModelError, match="no such ONNX file"):
        load_model(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage\xff\xff\xff\xff" * 10)
    with pytest.raises(ModelError, match="corrupt.onnx"):
        load_model(corrupt)
    with pytest.raises(ModelError):
        load_model(b"\xff\xfe not protobuf \x00\x01" * 3)
    with pytest.raises(ModelError, match="expected a path, bytes or onnx.ModelProto"):
        load_model(42)


def test_checker_failure_raises_model_error():
    node = helper.make_node("Add", ["x", "undefined"], ["y"], name="add_undefined")
    model = make_model([node], [tensor_info("x", F, [2])], [tensor_info("y", F, [2])])
    with pytest.raises(ModelError, match="onnx.checker") as caught:
        to_fx(model)
    assert "undefined" in str(caught.value)


def test_every_unsupported_operator_is_listed_at_once():
    inner = helper.make_graph(
        [helper.make_node("Hardmax", ["x"], ["h"], name="hardmax_in_branch")],
        "then_body",
        [],
        [tensor_info("h", F, [2, 2])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["i"], name="identity_in_branch")],
        "else_body",
        [],
        [tensor_info("i", F, [2, 2])],
    )
    nodes = [
        helper.make_node("Det", ["x"], ["d"], name="det_node"),
        helper.make_node("Hardmax", ["x"], ["hm"], name="hardmax_node"),
        helper.make_node("If", ["c"], ["z"], name="branch", then_branch=inner, else_branch=other),
    ]
    model = make_model(
        nodes,
        [tensor_info("x", F, [2, 2]), tensor_info("c", TensorProto.BOOL, [])],
        [tensor_info("d", F, []), tensor_info("hm", F, [2, 2]), tensor_info("z", F, [2, 2])],
        opset=17,
    )
    with pytest.raises(UnsupportedOperatorError) as caught:
        to_fx(model)
    error = caught.value
    assert isinstance(error, ChrionError) and isinstance(error, NotImplementedError)
    assert not isinstance(error, KeyError)
    assert len(error.ops) == 3
    message = str(error)
    for expected_text in ("Det (opset 17", "'det_node'", "Hardmax (opset 17", "'hardmax_node'",
                          "'hardmax_in_branch'", "subgraph 'branch.then_branch'"):  # fmt: skip
        assert expected_text in message


def test_unsupported_attribute_values_are_listed_with_their_nodes():
    nodes = [
        helper.make_node("Cast", ["x"], ["s"], to=TensorProto.STRING, name="cast_to_string"),
        helper.make_node("Pad", ["x", "pads"], ["p"], mode="bogus", name="pad_bogus"),
    ]
    pads = numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "pads")
    model = make_model(
        nodes,
        [tensor_info("x", F, [2, 2])],
        [tensor_info("s", TensorProto.STRING, [2, 2]), tensor_info("p", F, [4, 4])],
        [pads],
    )
    with pytest.raises(UnsupportedOperatorError) as caught:
        to_fx(model)
    assert len(caught.value.ops) == 2
    assert "'cast_to_string'" in str(caught.value) and "STRING" in str(caught.value)
    assert "'pad_bogus'" in str(caught.value) and "bogus" in str(caught.value)


def test_graph_outputs_from_multi_output_nodes_are_their_elements():
    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "weight")
    nodes = [
        helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3, name="split"),
        helper.make_node("Relu", ["b"], ["rb"], name="relu"),
    ]
    outputs = [
        tensor_info("c", F, [2, 1]),  # a later element first
        tensor_info("rb", F, [2, 1]),
        tensor_info("a", F, [2, 1]),
        tensor_info("x", F, [2, 3]),  # a graph input passed through
        tensor_info("weight", F, [2, 3]),  # an initializer as output
    ]
    model = make_model(nodes, [tensor_info("x", F, [2, 3])], outputs, [weight], opset=18)
    x = np.array([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]], np.float32)
    ours = assert_same_as_onnxruntime(model, {"x": x})
    np.testing.assert_array_equal(ours[0], x[:, 2:3])
    gm = to_fx(model)
    assert gm.meta["onnx_inputs"] == ["x"]
    assert gm.meta["onnx_outputs"] == ["c", "rb", "a", "x", "weight"]
    np.testing.assert_array_equal(ours[4], numpy_helper.to_array(weight))


def test_an_opset_without_converter_is_brought_down():
    # AveragePool-19 added dilations; onnx2torch converts only AveragePool-11, so the model
    # goes down to opset 18 with onnx.version_converter
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], name="pool")
    model = make_model(
        [node], [tensor_info("x", F, [1, 1, 4, 4])], [tensor_info("y", F, [1, 1, 3, 3])], opset=19
    )
    assert default_opset(load_model(model)) == 18
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32)
    assert_same_as_onnxruntime(model, {"x": x})
