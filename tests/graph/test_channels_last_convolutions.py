"""channels_last_convolutions: 2-D convolutions with constant weights compute channels-last, one
restride where a chain of them starts, outputs equal to eager's NCHW ones (to rounding), and
every other reader (a view traced for NCHW strides, the graph's output) given NCHW again."""

import torch
from torch import nn
from torch.fx import Interpreter
from torch.fx.experimental.proxy_tensor import make_fx

from torch_chrion.graph.passes import channels_last_convolutions, max_pool_windows

aten = torch.ops.aten
CL = torch.channels_last


def restrides(gm) -> list:
    return [
        n
        for n in gm.graph.nodes
        if n.target is aten.clone.default and n.kwargs.get("memory_format") == CL
    ]


def convolutions(gm) -> list:
    return [n for n in gm.graph.nodes if n.target is aten.convolution.default]


def run_recording_layouts(gm, *args) -> tuple[object, dict[str, bool]]:
    """gm(*args), and whether each convolution's output was channels-last."""
    layouts: dict[str, bool] = {}

    class Recording(Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.target is aten.convolution.default:
                layouts[n.name] = out.is_contiguous(memory_format=CL)
            return out

    return Recording(gm).run(*args), layouts


class Stack(nn.Module):
    """Two conv blocks as a speech front end has them: conv, norm, activation, pool."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.LeakyReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=2),
            nn.ReLU(),
            nn.MaxPool2d((1, 2)),
            nn.Conv2d(8, 6, (3, 1), padding=(1, 0)),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 4, 1, bias=False),
        )

    def forward(self, x):
        return self.layers(x.unsqueeze(1)).flatten(1)


def test_a_chain_of_convolutions_runs_channels_last_from_one_restride():
    model = Stack().eval()
    x = torch.randn(2, 10, 12)
    with torch.no_grad():
        gm = make_fx(model)(x)
        max_pool_windows(gm)
        channels_last_convolutions(gm)
        assert len(convolutions(gm)) == 4
        assert len(restrides(gm)) == 1  # the first conv's input; the others come channels-last
        for conv in convolutions(gm):
            weight = getattr(gm, conv.args[1].target)
            assert weight.is_contiguous(memory_format=CL)
        for _ in range(2):
            y = torch.randn(2, 10, 12)
            out, layouts = run_recording_layouts(gm, y)
            torch.testing.assert_close(out, model(y), rtol=1e-5, atol=1e-5)
            assert all(layouts.values()) and len(layouts) == 4


class Features(nn.Module):
    """Returns a convolution's output itself, and max-pool indices that a caller reads."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        pooled, indices = torch.nn.functional.max_pool2d(y, 2, return_indices=True)
        return y, pooled, indices, self.head(pooled).view(x.shape[0], -1)


def test_what_leaves_the_channels_last_region_has_the_traced_strides():
    model = Features().eval()
    x = torch.randn(2, 3, 6, 8)
    with torch.no_grad():
        gm = make_fx(model)(x)
        channels_last_convolutions(gm)
        expected = model(x)
        out, layouts = run_recording_layouts(gm, x)
        assert all(layouts.values()) and len(layouts) == 2
    for got, want in zip(out, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert got.stride() == want.stride()


class Reshaped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(2, 4, 3, padding=1)
        self.second = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        y = self.first(x)  # (N, 4, H, W) -> (N, 2, 2H, W): a reshape does not keep the layout
        return self.second(y.reshape(y.shape[0], 2, -1, y.shape[-1]))


def test_a_convolution_after_a_reshape_gets_a_restride_of_its_own():
    model = Reshaped().eval()
    x = torch.randn(2, 2, 5, 6)
    with torch.no_grad():
        gm = make_fx(model)(x)
        channels_last_convolutions(gm)
        assert len(restrides(gm)) == 2
        out, layouts = run_recording_layouts(gm, x)
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
        assert all(layouts.values())


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.tanh(self.conv(x)))


def test_a_weight_read_by_two_convolutions_is_restrided_once():
    model = Shared().eval()
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        gm = make_fx(model)(x)
        channels_last_convolutions(gm)
        targets = {c.args[1].target for c in convolutions(gm)}
        assert len(targets) == 1 and len(restrides(gm)) == 1
        tensors = [name for name, v in gm.__dict__.items() if isinstance(v, torch.Tensor)]
        held = tensors + [name for name, _ in gm.named_buffers()]
        assert len([name for name in held if name not in targets]) <= 1  # the bias only
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


class Others(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(3, 4, 3)
        self.transposed = nn.ConvTranspose2d(4, 2, 2)

    def forward(self, x, w):
        y = self.conv1d(x).unsqueeze(-1)
        z = torch.nn.functional.conv2d(y, w)  # a weight computed by the caller
        return self.transposed(z)


def test_other_convolutions_stay_as_they_are():
    model = Others().eval()
    x, w = torch.randn(2, 3, 9), torch.randn(4, 4, 1, 1)
    with torch.no_grad():
        gm = make_fx(model)(x, w)
        before = [tuple(c.args[:2]) for c in convolutions(gm)]
        channels_last_convolutions(gm)
        assert [tuple(c.args[:2]) for c in convolutions(gm)] == before
        assert not restrides(gm)
        torch.testing.assert_close(gm(x, w), model(x, w))
