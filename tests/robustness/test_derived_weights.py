"""Weights a pass derives from the model's (a batch norm folded into its convolution, a
channels-last copy of a convolution's weight, a bfloat16 copy of W_hh) follow the model after
capture: once load_state_dict has written other weights into it, every call of the compiled
model equals eager PyTorch with those weights, through torch.compile and compile_graph, and the
model's own tensors are written only by the user."""

import pytest
import torch
import torch._dynamo
from torch import nn

import torch_chrion

FAST = {"devices": ["cpu"], "profile_warmup": 1, "profile_repeats": 2}


class ConvBatchNorm(nn.Module):
    """Convolutions with and without a batch norm after them, channels 1 -> 8 -> 16, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, 8, 3, padding=1)  # one input channel: no restrided copy
        self.norm = nn.BatchNorm2d(8)
        self.second = nn.Conv2d(8, 16, 3, padding=1)
        self.second_norm = nn.BatchNorm2d(16)
        self.third = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16 * 6 * 6, 300)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.first(x)))
        x = torch.relu(self.second_norm(self.second(x)))
        return self.head(torch.relu(self.third(x)).flatten(1))


def other_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict of the same model with every float tensor drawn anew."""
    state = {}
    generator = torch.Generator().manual_seed(7)
    for name, value in model.state_dict().items():
        if not value.is_floating_point():
            state[name] = value.clone()
        elif name.endswith("running_var"):
            state[name] = torch.rand(value.shape, generator=generator) + 0.5
        else:
            state[name] = torch.randn(value.shape, generator=generator)
    return state


def compiled(model: nn.Module, x: torch.Tensor, path: str, **settings):
    options = {**FAST, **settings}
    if path == "torch.compile":
        torch._dynamo.reset()
        return torch.compile(model, backend="chrion", dynamic=False, options=options)
    return torch_chrion.compile_graph(model, (x,), torch_chrion.ChrionSettings(**options))


@pytest.mark.parametrize("path", ["torch.compile", "compile_graph"])
def test_folded_and_restrided_convolutions_follow_load_state_dict(path):
    torch.manual_seed(0)
    model = ConvBatchNorm().eval()
    x = torch.randn(2, 1, 6, 6)
    chrion = compiled(model, x, path)
    state = other_weights(model)
    with torch.no_grad():
        torch.testing.assert_close(chrion(x), model(x), rtol=1e-3, atol=1e-3)
        model.load_state_dict(state)
        for _ in range(2):
            torch.testing.assert_close(chrion(x), model(x), rtol=1e-3, atol=1e-3)
    for name, value in model.state_dict().items():  # only the user wrote the model's tensors
        assert torch.equal(value, state[name]), name


@pytest.mark.parametrize("path", ["torch.compile", "compile_graph"])
def test_bfloat16_recurrent_weights_follow_load_state_dict(path):
    torch.manual_seed(0)
    model = nn.GRU(8, 32).eval()
    x = torch.randn(6, 2, 8)
    chrion = compiled(model, x, path, recurrent_dtype="bfloat16")
    with torch.no_grad():
        model.load_state_dict(other_weights(model))
        got, expected = chrion(x)[0], model(x)[0]
    # bfloat16 W_hh: within its rounding of the new weights' outputs, far from the old ones'
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-2)


def test_a_model_built_under_inference_mode_compiles_and_runs():
    torch.manual_seed(0)
    with torch.inference_mode():  # inference tensors: no version counter to stamp
        model = ConvBatchNorm().eval()
        x = torch.randn(2, 1, 6, 6)
        expected = model(x)
    chrion = compiled(model, x, "compile_graph")
    with torch.inference_mode():
        torch.testing.assert_close(chrion(x), expected, rtol=1e-3, atol=1e-3)
