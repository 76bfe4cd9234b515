"""Models exported by PyTorch's TorchScript exporter carry no value_info; they load and match
onnxruntime (issue 19). Shape inference gives the converters their inputs' ranks; where it
cannot from the declared shapes, the example inputs' shapes do; LayerNorm takes its normalised
shape from its input, so a dimension inference leaves unknown is no 0."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from onnx_robustness_models import (
    ConvLayerNormBiLSTM,
    ConvMaxPoolBiGRU,
    GroupedLayerNormLSTM,
    LayerNormLanguageModel,
    assert_load_onnx_matches_onnxruntime,
    export_torchscript,
    make_model,
    onnxruntime_outputs,
)

from torch_chrion.onnx import to_fx


def test_conv_maxpool_bigru_crnn_export_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 12)
    proto = export_torchscript(ConvMaxPoolBiGRU(), x, {0: "batch", 3: "width"})
    assert_load_onnx_matches_onnxruntime(proto, x, [torch.randn(1, 1, 16, 20)], str(tmp_path))


def test_conv_layernorm_bilstm_export_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 7)
    proto = export_torchscript(ConvLayerNormBiLSTM(), x, {0: "batch", 2: "time"})
    assert_load_onnx_matches_onnxruntime(proto, x, [torch.randn(3, 8, 11)], str(tmp_path))


def test_lstm_language_model_with_layernorm_export_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    tokens = torch.randint(0, 50, (2, 9))
    proto = export_torchscript(LayerNormLanguageModel(), tokens, {0: "batch", 1: "time"})
    others = [torch.randint(0, 50, (1, 4)), torch.randint(0, 50, (3, 13))]
    assert_load_onnx_matches_onnxruntime(proto, tokens, others, str(tmp_path))


def test_layernorm_over_a_dimension_inference_cannot_tell(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    proto = export_torchscript(GroupedLayerNormLSTM(), x, {0: "batch", 1: "time"})
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True).graph.value_info
    norm = next(n for n in proto.graph.node if n.op_type == "LayerNormalization")
    (info,) = [v for v in inferred if v.name == norm.input[0]]
    assert not info.type.tensor_type.shape.dim[-1].HasField("dim_value")  # the hard case
    assert_load_onnx_matches_onnxruntime(proto, x, [torch.randn(1, 8, 16)], str(tmp_path))


def test_rank_unknown_to_inference_comes_from_the_example_inputs():
    # Squeeze without axes drops the size-1 dimensions: with symbolic sizes, inference cannot
    # tell how many there are, and MaxPool needs its input's rank
    proto = make_model(
        [
            helper.make_node("Squeeze", ["x"], ["squeezed"]),
            helper.make_node("MaxPool", ["squeezed"], ["y"], kernel_shape=[2]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "one", 4, "time"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    gm = to_fx(proto, example_shapes=[(2, 1, 4, 8)])
    for shape in [(2, 1, 4, 8), (3, 1, 4, 10)]:  # the module serves other shapes too
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            got = gm(torch.from_numpy(x)).numpy()
        want = torch.nn.functional.max_pool1d(torch.from_numpy(x).squeeze(1), 2, 1).numpy()
        np.testing.assert_array_equal(got, onnxruntime_outputs(proto, {"x": x})[0])
        np.testing.assert_array_equal(got, want)
