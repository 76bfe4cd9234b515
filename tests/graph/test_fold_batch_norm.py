"""fold_batch_norm: an inference batch norm after a convolution is folded into its weight and
bias, equal to eager (to rounding), the model's own tensors untouched; a batch norm that cannot
be folded stays."""

import pytest
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from torch_chrion.graph.capture import capture
from torch_chrion.graph.passes import fold_batch_norm

aten = torch.ops.aten
NORMS = (aten.native_batch_norm.default, aten._native_batch_norm_legit_no_training.default)


def norms(gm) -> int:
    return sum(n.target in NORMS for n in gm.graph.nodes)


def randomised(norm: nn.BatchNorm2d) -> nn.BatchNorm2d:
    """Running statistics and affine parameters far from the identity map."""
    with torch.no_grad():
        norm.running_mean.normal_(0, 2)
        norm.running_var.uniform_(0.1, 4)
        if norm.affine:
            norm.weight.normal_()
            norm.bias.normal_()
    return norm


class ConvNorm(nn.Module):
    def __init__(self, bias: bool = True, affine: bool = True, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, bias=bias, groups=groups)
        self.norm = randomised(nn.BatchNorm2d(8, affine=affine, eps=1e-3))

    def forward(self, x):
        return torch.relu(self.norm(self.conv(x)))


@pytest.mark.parametrize(
    "model",
    [ConvNorm(), ConvNorm(bias=False), ConvNorm(affine=False), ConvNorm(groups=4)],
    ids=["bias", "no-bias", "no-affine", "grouped"],
)
@pytest.mark.parametrize("no_grad", [True, False], ids=["no_grad", "grad"])
def test_a_conv_and_its_inference_norm_become_one_conv_equal_to_eager(model, no_grad):
    model.eval()
    owned = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 4, 6, 7)
    with torch.no_grad() if no_grad else torch.enable_grad():
        gm = make_fx(model)(x)
    assert norms(gm) == 1
    fold_batch_norm(gm)
    assert norms(gm) == 0
    with torch.no_grad():
        for _ in range(2):
            y = torch.randn(2, 4, 6, 7) * 3
            torch.testing.assert_close(gm(y), model(y), rtol=1e-5, atol=1e-5)
    for name, value in model.state_dict().items():
        assert torch.equal(value, owned[name]), f"{name} was written"


class ConvReadTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.norm = randomised(nn.BatchNorm2d(3))

    def forward(self, x):
        y = self.conv(x)
        return self.norm(y) + y


class LinearNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 5)
        self.norm = randomised(nn.BatchNorm1d(5))

    def forward(self, x):
        return self.norm(self.linear(x))


@pytest.mark.parametrize(
    "model, shape",
    [(ConvReadTwice(), (2, 3, 4, 4)), (LinearNorm(), (6, 5))],
    ids=["conv-output-read-elsewhere", "after-a-linear"],
)
def test_a_norm_that_cannot_be_folded_stays(model, shape):
    model.eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        gm = make_fx(model)(x)
        fold_batch_norm(gm)
        assert norms(gm) == 1
        torch.testing.assert_close(gm(x), model(x))


def test_a_training_mode_norm_stays():
    model = ConvNorm().train()
    x = torch.randn(2, 4, 6, 7)
    training = (*NORMS, aten._native_batch_norm_legit_functional.default)
    with torch.no_grad():
        gm = make_fx(model)(x)
    assert sum(n.target in training for n in gm.graph.nodes) == 1
    fold_batch_norm(gm)
    assert sum(n.target in training for n in gm.graph.nodes) == 1


def test_capture_folds_and_drops_the_unread_constants():
    model = ConvNorm().eval()
    x = torch.randn(2, 4, 6, 7)
    gm = capture(model, (x,))
    assert norms(gm) == 0
    read = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    held = {name for name, _ in gm.named_buffers()} | {name for name, _ in gm.named_parameters()}
    assert held <= read | {""}, f"constants nobody reads: {sorted(held - read)}"
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)
