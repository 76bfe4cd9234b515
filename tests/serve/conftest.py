"""Fixtures of the serving tests: the trained tagger, packaged from PyTorch and from its ONNX
export (helpers in serve_helpers.py)."""

from pathlib import Path

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
def onnx_package_command(onnx_file, tmp_path_factory):
    """The ONNX export packaged by ``chrion package`` (two shapes): (argv, what it printed)."""
    import contextlib
    import io

    from torch_chrion.cli import main

    root = tmp_path_factory.mktemp("packages")
    argv = ["package", str(onnx_file), "--shape", "features=10,1,8", "--more", "features=10,2,8"]
    argv += ["--batch-axis", "1", "--cache-dir", str(root / "cache"), "-o", str(root / "onnx")]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return argv, printed.getvalue()


@pytest.fixture(scope="session")
def onnx_package(onnx_package_command):
    argv, _ = onnx_package_command
    return Path(argv[argv.index("-o") + 1])


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
