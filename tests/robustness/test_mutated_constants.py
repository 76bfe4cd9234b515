"""Values a model builds from no input and then updates in place: each call of the compiled
model equals eager PyTorch, call after call (profiling runs included), and random draws or
writes into the model's own state are refused by name instead of frozen."""

import pytest
import torch
import torch._dynamo
from torch import fx, nn

import torch_chrion
from torch_chrion.errors import ModelError, UnsupportedOperatorError
from torch_chrion.graph import capture
from torch_chrion.graph.passes import fold_input_free

# few profiling runs: these tests are about values, not costs
FAST = {"devices": ["cpu"], "profile_warmup": 1, "profile_repeats": 2}
CALLS = 5


class ZerosAccumulatorLSTM(nn.Module):
    """A zeros accumulator that `+=` adds an LSTM's outputs into (the issue's first model)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(40, 32, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(x.shape[0], 32)
        out, _ = self.lstm(x)
        for t in range(out.shape[1]):
            total += out[:, t]
        total.add_(1.0)
        return total

    def example_inputs(self) -> tuple[torch.Tensor]:
        return (torch.randn(2, 6, 40),)


class CumulativeAttentionDecoder(nn.Module):
    """Decoder steps with location-sensitive attention over a cumulative-weights accumulator,
    as Tacotron-style TTS decoders keep it (the state starts as zeros inside forward)."""

    def __init__(self, dim: int = 16, steps: int = 4) -> None:
        super().__init__()
        self.steps = steps
        self.cell = nn.LSTMCell(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.location = nn.Conv1d(1, dim, 3, padding=1)
        self.energy = nn.Linear(dim, 1)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, memory: torch.Tensor) -> torch.Tensor:
        batch, length, dim = memory.shape
        h, c = torch.zeros(batch, dim), torch.zeros(batch, dim)
        context = torch.zeros(batch, dim)
        cumulative = torch.zeros(batch, length)
        frames = []
        for _ in range(self.steps):
            h, c = self.cell(context, (h, c))
            location = self.location(cumulative.unsqueeze(1)).transpose(1, 2)
            energies = self.energy(torch.tanh(self.query(h).unsqueeze(1) + memory + location))
            weights = torch.softmax(energies.squeeze(-1), dim=-1)
            cumulative += weights
            context = (weights.unsqueeze(-1) * memory).sum(1)
            frames.append(self.out(torch.cat([h, context], -1)))
        return torch.stack(frames, 1)

    def example_inputs(self) -> tuple[torch.Tensor]:
        return (torch.randn(2, 9, 16),)


class ArangeWindow(nn.Module):
    """A resampling-style window: arange, then clamp_ and mul_ in place, then applied."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = torch.arange(-4, 5, dtype=torch.float32)
        window.clamp_(min=-2.0, max=3.0)
        window.mul_(0.5)
        return x * window.exp()

    def example_inputs(self) -> tuple[torch.Tensor]:
        return (torch.randn(3, 9),)


def _eager(model, inputs):
    with torch.no_grad():
        return model(*inputs)


MODELS = [ZerosAccumulatorLSTM, CumulativeAttentionDecoder, ArangeWindow]


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_torch_compile_equals_eager_on_every_call(cls):
    torch.manual_seed(0)
    model = cls().eval()
    inputs = model.example_inputs()
    expected = _eager(model, inputs)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="chrion", dynamic=False, options=FAST)
    with torch.no_grad():
        for _ in range(CALLS):
            torch.testing.assert_close(compiled(*inputs), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_module_capture_path_equals_eager_on_every_call(cls):
    torch.manual_seed(0)
    model = cls().eval()
    inputs = model.example_inputs()
    expected = _eager(model, inputs)
    # two lanes: not the plan the torch.compile test made, so this module profiles itself
    settings = torch_chrion.ChrionSettings(**{**FAST, "devices": ("cpu:0", "cpu:1")})
    chrion = torch_chrion.compile_graph(model, inputs, settings)
    assert chrion.profiles_made == 1  # the profiling runs came before these calls
    for _ in range(CALLS):
        torch.testing.assert_close(chrion(*inputs), expected, rtol=1e-5, atol=1e-5)
    # a new input must not see the previous inputs' accumulation either
    other = tuple(torch.randn_like(x) for x in inputs)
    torch.testing.assert_close(chrion(*other), _eager(model, other), rtol=1e-5, atol=1e-5)


def test_captured_graph_has_no_in_place_writes_and_the_window_folds():
    gm = capture(ArangeWindow(), ArangeWindow().example_inputs())
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert not any(t._schema.is_mutable for t in targets), targets
    # the input-free window (arange, clamp_, mul_, exp) folded to one constant: one mul is left
    assert targets == [torch.ops.aten.mul.Tensor]


def test_writes_into_the_callers_inputs_stay_as_eager_makes_them():
    class ScaleInPlace(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x.mul_(2.0)
            return x + 1.0

    example = torch.randn(2, 3)
    chrion = torch_chrion.compile_graph(
        ScaleInPlace(), (example.clone(),), torch_chrion.ChrionSettings(**FAST)
    )
    given = torch.randn(2, 3)
    original = given.clone()
    torch.testing.assert_close(chrion(given), original * 2.0 + 1.0)
    torch.testing.assert_close(given, original * 2.0)


class InputFreeNoise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn(x.shape[0], x.shape[1])


def test_input_free_random_draw_is_refused_naming_the_operator():
    x = torch.randn(3, 4)
    with pytest.raises(UnsupportedOperatorError, match="aten.randn.default.*randn_like") as info:
        torch_chrion.compile_graph(InputFreeNoise(), (x,), torch_chrion.ChrionSettings(**FAST))
    assert info.value.ops == ["aten.randn.default"]


def test_random_draw_from_an_input_stays_a_fresh_draw_per_call():
    class Noise(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.rand_like(x)

    x = torch.zeros(64, 8)
    chrion = torch_chrion.compile_graph(Noise(), (x,), torch_chrion.ChrionSettings(**FAST))
    first, second = chrion(x), chrion(x)
    for noise in (first, second):
        assert ((noise >= 0) & (noise < 1)).all()
        assert noise.std() > 0.2  # uniform on [0, 1): std 0.29
    assert not torch.equal(first, second)


def test_writes_into_the_models_own_state_are_refused():
    class Counter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("count", torch.zeros(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.count.add_(1.0)
            return x + self.count

    with pytest.raises(UnsupportedOperatorError, match=r"buffer or parameter of shape \(4,\)"):
        capture(Counter(), (torch.zeros(2, 4),))


def _graph(build) -> fx.GraphModule:
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(build(graph, x))
    return fx.GraphModule(nn.Module(), graph)


def test_fold_refuses_a_graph_that_writes_into_an_input_free_value():
    aten = torch.ops.aten

    def build(graph, x):
        zeros = graph.call_function(aten.zeros.default, ([3],), {"device": torch.device("cpu")})
        return graph.call_function(aten.add_.Tensor, (zeros, x))

    with pytest.raises(ModelError, match="writes in place into zeros"):
        fold_input_free(_graph(build))
