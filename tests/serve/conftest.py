"""Fixtures of the serving tests: the trained tagger, packaged from PyTorch and from its ONNX
export (helpers in serve_helpers.py)."""

import pytest
import torch
from serve_helpers import FAST, CausalTagger, Tagger, frames, train_tagger


@pytest.fixture(scope="session")
def tagger() -> Tagger:
    return train_tagger()


@pytest.fixture(scope="session")
def torch_package(tagger, tmp_path_factory):
    import torch_chrion

    root = tmp_path_factory.mktemp("packages")
    path = torch_chrion.package(
        tagger,
        (frames(10),),
        root / "tagger",
        more_inputs=[(frames(10, batch=2),)],
        batch_axis=1,
        cache_dir=str(root / "cache"),
        **FAST,
    )
    return path


@pytest.fixture(scope="session")
def onnx_file(tagger, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tagger.onnx"
    torch.onnx.export(
        tagger,
        (frames(10),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["features"],
        output_names=["log_probs"],
        dynamic_axes={"features": {0: "time", 1: "batch"}, "log_probs": {0: "time", 1: "batch"}},
    )
    return path


@pytest.fixture(scope="session")
def onnx_package(onnx_file, tmp_path_factory):
    import torch_chrion

    root = tmp_path_factory.mktemp("packages")
    return torch_chrion.package(
        str(onnx_file),
        (frames(10),),
        root / "tagger_onnx",
        batch_axis=1,
        cache_dir=str(root / "cache"),
        **FAST,
    )


@pytest.fixture(scope="session")
def causal_tagger() -> CausalTagger:
    torch.manual_seed(1)
    return CausalTagger().eval()


@pytest.fixture(scope="session")
def causal_package(causal_tagger, tmp_path_factory):
    import torch_chrion

    root = tmp_path_factory.mktemp("packages")
    return torch_chrion.package(
        causal_tagger,
        (frames(10),),
        root / "causal",
        batch_axis=1,
        cache_dir=str(root / "cache"),
        **FAST,
    )
