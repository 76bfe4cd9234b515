"""package / load_package: the packaged model starts with no capture and no profiling on the
machine it was made on, answers what eager PyTorch and onnxruntime answer, re-profiles (or with
strict=True refuses) elsewhere, and never unpickles code."""

import json
import shutil

import numpy as np
import pytest
import torch
from serve_helpers import frames

import torch_chrion
from torch_chrion.artifact import PackageMismatchError
from torch_chrion.errors import ModelError, OptionError


def test_torch_package_loads_without_capture_or_profiling(torch_package, tagger, monkeypatch):
    import torch_chrion.graph as graph

    calls = []
    real = graph.capture
    monkeypatch.setattr(graph, "capture", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = torch_chrion.load_package(torch_package)
    assert model.differences == []
    for x in (frames(10), frames(10, batch=2, seed=1)):  # both packaged shapes
        torch.testing.assert_close(model(x), tagger(x).detach(), atol=1e-5, rtol=1e-5)
    assert model.profiles_made == 0 and calls == []
    assert model.input_names == ["features"] and model.batch_axis == 1


def test_unpackaged_shape_is_captured_from_the_stored_program(torch_package, tagger):
    model = torch_chrion.load_package(torch_package)
    x = frames(13, seed=2)  # same bucket as the packaged 10 frames: its plan is reused
    torch.testing.assert_close(model(x), tagger(x).detach(), atol=1e-5, rtol=1e-5)
    assert model.profiles_made == 0


def test_onnx_package_matches_onnxruntime(onnx_package, onnx_file):
    import onnxruntime as ort

    model = torch_chrion.load_package(onnx_package)
    assert model.input_names == ["features"] and model.output_names == ["log_probs"]
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    for x in (frames(10), frames(15, seed=3)):  # one bucket (16 frames)
        (expected,) = session.run(None, {"features": x.numpy()})
        np.testing.assert_allclose(model(x).numpy(), expected, atol=1e-5, rtol=1e-5)
    assert model.profiles_made == 0


def _copy_with_identity(package, tmp_path, **changes):
    copy = shutil.copytree(package, tmp_path / "copy")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["identity"].update(changes)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_other_machine_strict_names_the_differences(torch_package, tmp_path):
    copy = _copy_with_identity(torch_package, tmp_path, cpu="Some Other CPU", torch="2.0.0")
    with pytest.raises(PackageMismatchError, match="cpu: 'Some Other CPU' in the package") as err:
        torch_chrion.load_package(copy, strict=True)
    assert [d[0] for d in err.value.differences] == ["cpu", "torch"]


def test_other_machine_profiles_again(torch_package, tagger, tmp_path, monkeypatch):
    import torch_chrion.module

    monkeypatch.setattr(torch_chrion.module, "_PLANS", {})  # as in a fresh process there
    copy = _copy_with_identity(torch_package, tmp_path, cpu="Some Other CPU")
    model = torch_chrion.load_package(copy, cache_dir=str(tmp_path / "cache"))
    assert model.profiles_made == 1  # the example's bucket, planned here
    x = frames(10)
    torch.testing.assert_close(model(x), tagger(x).detach(), atol=1e-5, rtol=1e-5)


class Payload:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_pickled_code_in_a_package_is_refused(torch_package, tmp_path, capsys):
    copy = shutil.copytree(torch_package, tmp_path / "copy")
    torch.save({"_param_constant0": Payload()}, copy / "graphs/0.pt")
    with pytest.raises(ModelError, match="cannot read the saved graph"):
        torch_chrion.load_package(copy)
    assert "unpickled code ran" not in capsys.readouterr().out


def test_not_a_package(tmp_path):
    with pytest.raises(ModelError, match="not a torch_chrion package"):
        torch_chrion.load_package(tmp_path)


def test_existing_path_is_kept_unless_overwrite(tagger, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(OptionError, match="overwrite"):
        torch_chrion.package(tagger, (frames(4),), tmp_path / "taken")
    assert list(tmp_path.iterdir()) == [tmp_path / "taken"]  # nothing half-written beside it


def test_chrion_package_command(onnx_package_command, onnx_package, capsys):
    from torch_chrion.cli import main

    argv, printed = onnx_package_command
    assert "(2 shape(s))" in printed
    model = torch_chrion.load_package(onnx_package)
    assert [e["shapes"] for e in model.manifest["entries"]] == [[[10, 1, 8]], [[10, 2, 8]]]
    assert model.batch_axis == 1 and model.profiles_made == 0
    assert main(argv) == 2  # exists: refused, named
    assert "overwrite" in capsys.readouterr().err
