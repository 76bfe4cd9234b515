import pytest
import torch
from models import StackedLSTM


@pytest.fixture(scope="session")
def stacked_lstm_onnx(tmp_path_factory):
    """StackedLSTM exported by the TorchScript exporter at opset 17, with a dynamic length."""
    torch.manual_seed(0)
    model = StackedLSTM().eval()
    path = tmp_path_factory.mktemp("models") / "stacked_lstm.onnx"
    torch.onnx.export(
        model,
        model.example_inputs(),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "seq"}, "y": {0: "seq"}},
    )
    return path, model


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")
