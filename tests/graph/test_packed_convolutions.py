"""packed_convolutions: 2-D constant-weight float32 convolutions become chrion::conv2d nodes,
a ReLU that only reads one folded in, equal to eager; what it cannot take stays."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from torch_chrion.graph.capture import capture
from torch_chrion.graph.passes import packed_convolutions
from torch_chrion.ops import ensure_loaded

aten = torch.ops.aten


def conv2d_nodes(gm) -> list:
    ensure_loaded()
    return [n for n in gm.graph.nodes if n.target is torch.ops.chrion.conv2d.default]


def count(gm, target) -> int:
    return sum(n.target is target for n in gm.graph.nodes)


class Blocks(nn.Module):
    """Conv + ReLU, conv + BatchNorm + LeakyReLU, conv + hardtanh, conv + clamp, and a conv
    whose ReLU is not its only reader."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.norm = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.d = nn.Conv2d(8, 8, 3, padding=1)
        self.e = nn.Conv2d(8, 4, (3, 1), stride=(2, 1))
        with torch.no_grad():
            self.norm.running_mean.normal_()
            self.norm.running_var.uniform_(0.5, 2)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = torch.nn.functional.leaky_relu(self.norm(self.b(y)), 0.2)
        y = torch.nn.functional.hardtanh(self.c(y), 0.0, 2.0)
        y = torch.clamp(self.d(y), -1.0, 1.5)
        z = self.e(y)
        return torch.relu(z) + z


def test_convolutions_become_conv2d_nodes_with_their_activation_equal_to_eager():
    torch.manual_seed(0)
    model = Blocks().eval()
    x = torch.randn(2, 1, 12, 16)
    gm = capture(model, (x,))
    nodes = conv2d_nodes(gm)
    assert count(gm, aten.convolution.default) == 0
    assert [(n.args[7], n.args[8]) for n in nodes] == [
        ("relu", []),
        ("leaky_relu", [0.2]),
        ("hardtanh", [0.0, 2.0]),
        ("hardtanh", [-1.0, 1.5]),
        ("none", []),  # its ReLU is not its only reader
    ]
    assert count(gm, aten.relu.default) == 1
    with torch.no_grad():
        for _ in range(2):
            y = torch.randn(2, 1, 12, 16)
            torch.testing.assert_close(gm(y), model(y), rtol=1e-5, atol=1e-4)


class Transposed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)

    def forward(self, x):
        return torch.relu(self.up(x))


class InputWeight(nn.Module):
    def forward(self, x, w):
        return torch.relu(torch.conv2d(x, w))


@pytest.mark.parametrize(
    "model,inputs",
    [
        (Transposed(), (torch.randn(1, 4, 5, 5),)),
        (nn.Conv1d(4, 4, 3), (torch.randn(1, 4, 9),)),
        (nn.Conv2d(4, 4, 3).double(), (torch.randn(1, 4, 6, 6, dtype=torch.float64),)),
        (InputWeight(), (torch.randn(1, 4, 6, 6), torch.randn(2, 4, 3, 3))),
    ],
    ids=["transposed", "1-d", "float64", "computed-weight"],
)
def test_what_conv2d_cannot_take_stays_as_it_was(model, inputs):
    with torch.no_grad():
        gm = make_fx(model.eval())(*inputs)
        expected = gm(*inputs)
        packed_convolutions(gm)
        torch.testing.assert_close(gm(*inputs), expected)
    assert not conv2d_nodes(gm) and count(gm, aten.convolution.default) == 1
