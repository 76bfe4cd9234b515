"""Importing: torch_chrion never needs onnx2torch, and a broken torchvision gives a clear
error. The ONNX backend API (prepare / run / run_model / supports_device)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from chrion_onnx_testing import make_model, tensor_info
from onnx import TensorProto, helper

from torch_chrion.errors import ModelError, OptionError
from torch_chrion.onnx._onnx2torch import matching_torchvision
from torch_chrion.onnx.backend import ChrionBackend

F = TensorProto.FLOAT


def run_python(code: str, extra_path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_import_torch_chrion_does_not_import_onnx2torch():
    done = run_python(
        """
        import sys
        import torch_chrion
        assert "onnx2torch" not in sys.modules, "onnx2torch imported by torch_chrion"
        assert "torch_chrion.onnx" not in sys.modules
        print("clean")
        """
    )
    assert done.returncode == 0, done.stderr
    assert "clean" in done.stdout


def test_broken_torchvision_gives_a_chrion_error_saying_what_to_install(tmp_path):
    fake = tmp_path / "torchvision"
    fake.mkdir()
    # what a torchvision built for another torch does on import
    (fake / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n'
    )
    done = run_python(
        """
        import torch_chrion  # must still work
        try:
            import torch_chrion.onnx
        except torch_chrion.ChrionError as error:
            assert isinstance(error, ImportError)
            print("CHRION:", error)
        else:
            print("NO ERROR")
        """,
        extra_path=str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert "CHRION:" in done.stdout, done.stdout + done.stderr
    assert "torchvision must match torch" in done.stdout
    assert f"pip install torchvision=={matching_torchvision()}" in done.stdout
    assert "torchvision::nms does not exist" in done.stdout


def test_matching_torchvision_follows_the_release_table():
    import torchvision  # the installed pair matches, so it is the reference

    assert matching_torchvision().split(".")[:2] == torchvision.__version__.split(".")[:2]


def two_output_model():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["x", "y"], ["s"])]
    inputs = [tensor_info("x", F, [2, 3]), tensor_info("y", F, [2, 3])]
    return make_model(nodes, inputs, [tensor_info("r", F, [2, 3]), tensor_info("s", F, [2, 3])])


def test_backend_prepare_and_run():
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    y = np.ones((2, 3), np.float32)
    rep = ChrionBackend.prepare(two_output_model(), "CPU")
    for outputs in (
        rep.run([x, y]),
        rep.run({"y": y, "x": x}),
        ChrionBackend.run_model(two_output_model(), [x, y]),
    ):
        assert isinstance(outputs, tuple) and len(outputs) == 2
        assert all(isinstance(o, np.ndarray) for o in outputs)
        np.testing.assert_array_equal(outputs[0], np.maximum(x, 0))
        np.testing.assert_array_equal(outputs[1], x + y)
    with pytest.raises(ModelError, match="unknown input name"):
        rep.run({"x": x, "nope": y})


def test_backend_devices():
    assert ChrionBackend.supports_device("CPU")
    assert ChrionBackend.supports_device("CUDA") == torch.cuda.is_available()
    assert not ChrionBackend.supports_device("TPU")
    with pytest.raises(OptionError, match="unknown device"):
        ChrionBackend.prepare(two_output_model(), "TPU")


@pytest.mark.cuda
def test_backend_runs_on_cuda():
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    outputs = ChrionBackend.prepare(two_output_model(), "CUDA").run([x, x])
    np.testing.assert_allclose(outputs[1], 2 * x)
