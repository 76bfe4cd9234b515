"""The onnxruntime habits on a loaded model (torch_chrion/session.py): numpy in and out, inputs
by name, run(output_names, feeds) and get_inputs/get_outputs, each checked against onnxruntime
on the same model; pickling refused with the documented alternative."""

import copy
import pickle

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

import torch_chrion
from torch_chrion.errors import ModelError, NotPicklableError

onnxruntime.set_default_logger_severity(3)


class TwoInTwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, features, offset):
        hidden, last = self.gru(features)
        return self.head(hidden) + offset, torch.tanh(last)


@pytest.fixture(scope="module")
def two_output_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = TwoInTwoOut().eval()
    path = tmp_path_factory.mktemp("models") / "two.onnx"
    example = (torch.randn(6, 2, 4), torch.randn(3))
    torch.onnx.export(
        model,
        example,
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["features", "offset"],
        output_names=["scores", "state"],
        dynamic_axes={"features": {0: "time"}, "scores": {0: "time"}},
    )
    return path, example


@pytest.fixture(scope="module")
def loaded(two_output_onnx, tmp_path_factory):
    path, example = two_output_onnx
    cache = str(tmp_path_factory.mktemp("cache"))
    chrion = torch_chrion.load_onnx(path, example_inputs=example, devices=["cpu"], cache_dir=cache)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"features": example[0].numpy(), "offset": example[1].numpy()}
    return chrion, session, feeds


def describe(args):
    return [(a.name, a.shape, a.type) for a in args]


def test_metadata_matches_onnxruntime(loaded):
    chrion, session, _ = loaded
    assert describe(chrion.get_inputs()) == describe(session.get_inputs())
    assert describe(chrion.get_outputs()) == describe(session.get_outputs())
    assert describe(chrion.get_inputs())[0] == ("features", ["time", 2, 4], "tensor(float)")
    assert [a.dtype for a in chrion.get_outputs()] == [np.dtype(np.float32)] * 2


def test_run_matches_onnxruntime(loaded):
    chrion, session, feeds = loaded
    for names in (None, ["state"], ["state", "scores"]):
        got = chrion.run(names, feeds)
        want = session.run(names, feeds)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert isinstance(g, np.ndarray)
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_numpy_in_numpy_out_by_name_or_position(loaded):
    chrion, session, feeds = loaded
    want = session.run(None, feeds)
    longer = {"features": np.random.default_rng(0).standard_normal((9, 2, 4), np.float32)}
    longer["offset"] = feeds["offset"]
    calls = [
        (chrion(**feeds), want),
        (chrion(feeds["features"], offset=feeds["offset"]), want),
        (chrion(feeds["features"], feeds["offset"]), want),
        (chrion(**longer), session.run(None, longer)),  # another length: planned on first use
    ]
    for got, expected in calls:
        assert isinstance(got, tuple) and all(isinstance(g, np.ndarray) for g in got)
        for g, w in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    tensors = chrion(torch.from_numpy(feeds["features"]), torch.from_numpy(feeds["offset"]))
    assert all(isinstance(t, torch.Tensor) for t in tensors)  # torch in, torch out


@pytest.mark.parametrize(
    "feeds_change,message",
    [
        ({"feature": None}, "unknown \\['feature'\\]"),
        ({"offset": "drop"}, "missing \\['offset'\\]"),
        ({"offset": np.zeros(3, np.float64)}, "'offset' must be tensor\\(float\\)"),
        ({"offset": np.zeros((1, 3), np.float32)}, "'offset' must have shape \\[3\\]"),
    ],
)
def test_bad_feeds_are_refused_like_onnxruntime(loaded, feeds_change, message):
    chrion, session, feeds = loaded
    bad = dict(feeds)
    for name, value in feeds_change.items():
        if value is None:
            bad[name] = bad.pop("features")
        elif isinstance(value, str):
            del bad[name]
        else:
            bad[name] = value
    with pytest.raises(Exception):  # noqa: B017  (onnxruntime's own error types)
        session.run(None, bad)
    with pytest.raises(ModelError, match=message):
        chrion.run(None, bad)


def test_unknown_output_name_is_refused(loaded):
    chrion, _, feeds = loaded
    with pytest.raises(ModelError, match="unknown output name\\(s\\) \\['score'\\]"):
        chrion.run(["score"], feeds)


def test_inputs_by_name_for_an_nn_module(tmp_path):
    torch.manual_seed(0)
    model = TwoInTwoOut().eval()
    example = (torch.randn(6, 2, 4), torch.randn(3))
    chrion = torch_chrion.compile_graph(
        model, example, torch_chrion.ChrionSettings(devices=("cpu",), cache_dir=str(tmp_path))
    )
    with torch.no_grad():
        want = model(*example)
    got = chrion(offset=example[1], features=example[0])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelError, match="given twice \\['features'\\]"):
        chrion(example[0], features=example[0], offset=example[1])
    with pytest.raises(ModelError, match="ONNX models only"):
        chrion.get_inputs()


def test_pickling_names_the_way_to_persist(loaded):
    chrion, _, _ = loaded
    for attempt in (pickle.dumps, copy.deepcopy):
        with pytest.raises(NotPicklableError, match="load_package") as info:
            attempt(chrion)
        assert isinstance(info.value, TypeError)  # what pickle's callers catch
