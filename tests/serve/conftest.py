"""Packages shared by the serving tests: a BiLSTM tagger trained for a few steps the way a
training script would, packaged from PyTorch and from its ONNX export."""

import pytest
import torch
from torch import nn

FEATURES, CLASSES = 8, 5


class Tagger(nn.Module):
    """A 2-layer bidirectional LSTM with a per-frame classifier, time-major (T, N, F)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, 16, num_layers=2, bidirectional=True)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(features)
        return self.head(y).log_softmax(-1)


def train_tagger() -> Tagger:
    """What a training script does: a few optimiser steps, then eval()."""
    torch.manual_seed(0)
    model = Tagger()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        x = torch.randn(12, 4, FEATURES)
        target = torch.randint(0, CLASSES, (12, 4))
        loss = nn.functional.nll_loss(model(x).flatten(0, 1), target.flatten())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def frames(length: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(length, batch, FEATURES, generator=torch.Generator().manual_seed(seed))


FAST = {"profile_warmup": 1, "profile_repeats": 3}


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
