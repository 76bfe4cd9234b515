"""chrion's CPU recurrent kernels (csrc/kernels/recurrent_cpu*.{h,cpp}) against aten's
lstm / gru / rnn (torch.nn modules, which call them), at float32 rtol 1e-5 / atol 1e-6.

Every case checks that chrion's kernel ran (its packed-weight cache gained the layer's weights),
so a regression to the aten path cannot pass unnoticed.
"""

from __future__ import annotations

import textwrap

import pytest
import torch
from fresh_process import run_script
from recurrent_reference import (
    TOL,
    assert_reverse_matches_flipped_reference,
    make_module,
    ran_chrion_kernel,
    run_chrion,
    run_reference,
)
from torch import Tensor, nn

from torch_chrion._extension import load
from torch_chrion.ops import ensure_loaded


def _check(
    kind: str,
    features: int,
    hidden: int,
    layers: int,
    bidirectional: bool,
    batch: int,
    steps: int,
    batch_first: bool,
    bias: bool = True,
) -> None:
    module = make_module(kind, features, hidden, layers, bidirectional, bias)
    dirs = 2 if bidirectional else 1
    x = torch.randn((batch, steps, features) if batch_first else (steps, batch, features))
    module.batch_first = batch_first
    h0 = torch.randn(layers * dirs, batch, hidden)
    c0 = torch.randn(layers * dirs, batch, hidden) if kind == "lstm" else None
    with torch.no_grad():
        got = run_chrion(kind, module, x, h0, c0, batch_first)
        want = run_reference(kind, module, x, h0, c0)
    assert ran_chrion_kernel(module)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


# sizes: hidden not a multiple of any vector width (7, 20, 33), one vector (16), several (64);
# batch 1, under / at / over the kernel's row group (3, 4, 5 rows), 9 (2 groups + 1), 2, 6 and 7
# (a last group of 2 or 3 rows); the projection's steps x batch rows leave 0-5 rows after its
# groups of 6 (7 rows: 1, 22: 4, 35: 5, 42: 0)
CASES = [
    # kind, features, hidden, layers, bidirectional, batch, steps, batch_first
    ("lstm", 10, 20, 1, False, 1, 7, False),
    ("lstm", 10, 20, 2, True, 3, 5, True),
    ("lstm", 5, 33, 3, False, 5, 4, False),
    ("lstm", 16, 64, 2, True, 9, 6, False),
    ("lstm", 40, 7, 1, True, 4, 1, True),
    ("lstm", 12, 40, 2, False, 6, 7, False),
    ("gru", 10, 20, 1, False, 1, 7, False),
    ("gru", 10, 20, 2, True, 3, 5, True),
    ("gru", 5, 33, 3, False, 5, 4, False),
    ("gru", 16, 64, 2, True, 9, 6, True),
    ("gru", 40, 16, 1, True, 4, 1, False),
    ("gru", 9, 24, 1, True, 2, 11, True),
    ("rnn_tanh", 10, 20, 1, False, 1, 7, False),
    ("rnn_tanh", 6, 33, 2, True, 5, 5, True),
    ("rnn_tanh", 16, 64, 3, False, 9, 4, False),
    ("rnn_tanh", 8, 48, 2, False, 7, 5, False),
    ("rnn_relu", 10, 20, 2, True, 1, 7, False),
    ("rnn_relu", 6, 33, 1, False, 9, 5, True),
    # A layer's input projection runs a chunk of steps at a time (ceil(48 / batch) steps, Note [CPU
    # recurrent kernel]): sequences of several chunks and a partial last one, both directions (the
    # backward one fills its chunks from the end), time- and batch-major, and a batch of more than
    # 48 rows (one step per chunk).
    ("lstm", 12, 33, 2, True, 5, 23, True),
    ("gru", 12, 33, 2, True, 5, 23, False),
    ("rnn_tanh", 12, 40, 3, True, 5, 23, True),
    ("lstm", 7, 20, 1, False, 1, 101, False),
    ("gru", 7, 20, 2, True, 50, 3, True),
]


@pytest.mark.parametrize("kind,features,hidden,layers,bidirectional,batch,steps,batch_first", CASES)
def test_kernel_matches_aten(
    kind: str,
    features: int,
    hidden: int,
    layers: int,
    bidirectional: bool,
    batch: int,
    steps: int,
    batch_first: bool,
) -> None:
    torch.manual_seed(hash((kind, hidden, layers, batch)) % 2**31)
    _check(kind, features, hidden, layers, bidirectional, batch, steps, batch_first)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_kernel_matches_aten_at_serving_sizes(kind: str) -> None:
    """Hidden 256 (the layer whose weights fill one core's L2), a long-ish sequence, batch 1
    and 32: errors must not grow along the recurrence."""
    torch.manual_seed(1)
    _check(kind, 64, 256, 2, True, 1, 48, False)
    _check(kind, 64, 256, 1, False, 32, 24, True)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_kernel_matches_aten_where_the_gates_saturate(kind: str) -> None:
    """Input biases drawn from [-30, 30], so that the gates' inputs reach far into tanh's and
    sigmoid's flat ends (tanh's rational form is clamped at |x| = 9, Note [Gate activations])
    as well as near 0, over 64 steps. The weights keep their scale: scaled up, the sums round
    off by more than the tolerance before any activation, and the recurrence turns chaotic."""
    torch.manual_seed(7)
    module = make_module(kind, 16, 48, 2, True)
    with torch.no_grad():
        for name, w in module.named_parameters():
            if name.startswith("bias_ih"):
                w.uniform_(-30.0, 30.0)
    x, h0 = torch.randn(64, 3, 16), torch.randn(4, 3, 48)
    c0 = torch.randn(4, 3, 48) if kind == "lstm" else None
    with torch.no_grad():
        pre = nn.functional.linear(x, module.weight_ih_l0, module.bias_ih_l0)
        assert pre.abs().max() > 20 and (pre.abs() < 1).any()
        got = run_chrion(kind, module, x, h0, c0, batch_first=False)
        want = run_reference(kind, module, x, h0, c0)
    assert ran_chrion_kernel(module)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_kernel_without_biases(kind: str) -> None:
    torch.manual_seed(2)
    _check(kind, 12, 20, 2, True, 3, 5, False, bias=False)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_reverse_runs_backwards_in_time(kind: str) -> None:
    """`reverse` (one half of a split bidirectional layer) equals aten on the flipped input."""
    torch.manual_seed(3)
    module = make_module(kind, 8, 20, 1, False)
    for steps in (6, 37):  # one projection chunk (16 steps at batch 3), and three
        x, h0 = torch.randn(steps, 3, 8), torch.randn(1, 3, 20)
        c0 = torch.randn(1, 3, 20) if kind == "lstm" else None
        assert_reverse_matches_flipped_reference(kind, module, x, h0, c0, batch_first=False)


def test_unbatched_input() -> None:
    torch.manual_seed(4)
    module = make_module("gru", 8, 20, 2, True)
    x, h0 = torch.randn(5, 8), torch.randn(4, 20)
    with torch.no_grad():
        got = run_chrion("gru", module, x, h0, None, batch_first=False)
        want = run_reference("gru", module, x, h0, None)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


def test_float64_runs_aten_kernel() -> None:
    """Other dtypes keep PyTorch's kernel: same results as aten, nothing packed."""
    torch.manual_seed(5)
    module = make_module("lstm", 8, 20, 1, False).double()
    x, h0 = torch.randn(5, 2, 8, dtype=torch.float64), torch.randn(1, 2, 20, dtype=torch.float64)
    with torch.no_grad():
        got = run_chrion("lstm", module, x, h0, h0, batch_first=False)
        want = run_reference("lstm", module, x, h0, h0)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    assert not ran_chrion_kernel(module)


def _lstm_call(module: nn.Module, x: Tensor) -> Tensor:
    h0 = torch.zeros(module.num_layers, x.shape[1], module.hidden_size)
    with torch.no_grad():
        return run_chrion("lstm", module, x, h0, h0, batch_first=False)[0]


def _eager(module: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return module(x)[0]


def test_packed_weights_follow_load_state_dict() -> None:
    torch.manual_seed(6)
    module, other = make_module("lstm", 8, 32, 2, False), make_module("lstm", 8, 32, 2, False)
    x = torch.randn(5, 2, 8)
    before = _lstm_call(module, x)
    torch.testing.assert_close(before, _eager(module, x), **TOL)
    module.load_state_dict(other.state_dict())
    after = _lstm_call(module, x)
    torch.testing.assert_close(after, _eager(other, x), **TOL)
    assert ran_chrion_kernel(module)
    assert not torch.allclose(before, after)


def test_packed_weights_follow_in_place_writes_and_rebinding() -> None:
    torch.manual_seed(7)
    module = make_module("lstm", 8, 32, 1, False)
    x = torch.randn(5, 2, 8)
    _lstm_call(module, x)
    with torch.no_grad():
        module.weight_hh_l0.mul_(-0.5)  # in place: bumps the version counter
    torch.testing.assert_close(_lstm_call(module, x), _eager(module, x), **TOL)
    module.weight_hh_l0.data = torch.randn(128, 32)  # rebinding: new data pointer
    torch.testing.assert_close(_lstm_call(module, x), _eager(module, x), **TOL)


def test_inference_tensor_weights() -> None:
    """Inference tensors carry no version counter: packed on every call, still exact."""
    torch.manual_seed(8)
    with torch.inference_mode():
        module = make_module("lstm", 8, 32, 1, False)
        x = torch.randn(5, 2, 8)
        first = _lstm_call(module, x)
        module.weight_hh_l0.mul_(-0.5)
        second = _lstm_call(module, x)
        torch.testing.assert_close(second, _eager(module, x), **TOL)
    assert not torch.allclose(first, second)


def test_freed_weights_leave_the_cache() -> None:
    torch.manual_seed(9)
    x = torch.randn(3, 1, 8)
    for _ in range(5):
        _lstm_call(make_module("lstm", 8, 16, 2, False), x)
    # each miss drops the entries of freed weights: at most the last module's two layers remain
    # (plus whatever other live modules of this process hold)
    live = load("kernels").packed_weights_cached()
    _lstm_call(make_module("lstm", 8, 16, 2, False), x)
    assert load("kernels").packed_weights_cached() <= live


@pytest.mark.parametrize(
    "change,message",
    [
        ("features+1", "input has 41 features but weight_ih_l0 expects 40"),
        ("features-1", "input has 39 features but weight_ih_l0 expects 40"),
        ("h0", "h0 must be [2, 3, 16]"),
        ("c0", "c0 must be [2, 3, 16]"),
        ("params", "expected 8 weight tensors"),
        ("rank", "input must be 3-D"),
    ],
)
def test_wrong_sizes_are_refused_with_the_argument_named(change: str, message: str) -> None:
    """Issue #19: 41 features instead of 40 gave all-NaN, 39 gave garbage."""
    module = make_module("lstm", 40, 16, 2, False)
    x, h0, c0 = torch.randn(5, 3, 40), torch.zeros(2, 3, 16), torch.zeros(2, 3, 16)
    params = list(module._flat_weights)
    if change.startswith("features"):
        x = torch.randn(5, 3, 41 if change.endswith("+1") else 39)
    elif change == "h0":
        h0 = torch.zeros(2, 4, 16)
    elif change == "c0":
        c0 = torch.zeros(1, 3, 16)
    elif change == "params":
        params = params[:-1]
    else:
        x = torch.randn(1, 5, 3, 40)
    ensure_loaded()
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("+", r"\+")):
        with torch.no_grad():
            torch.ops.chrion.lstm(x, h0, c0, params, True, 2, False, False, False)


def test_gru_feature_mismatch_on_a_later_layer_input() -> None:
    module = make_module("gru", 8, 16, 2, True)
    params = list(module._flat_weights)
    params[8] = torch.randn(48, 16)  # weight_ih_l1: layer 1 takes 2 * 16 features
    ensure_loaded()
    with pytest.raises(ValueError, match="layer input has 32 features but weight_ih_l1"):
        torch.ops.chrion.gru(
            torch.randn(4, 2, 8), torch.zeros(4, 2, 16), params, True, 2, True, False, False
        )


_ISA_SCRIPT = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch_chrion._extension import load
    from torch_chrion.ops import ensure_loaded
    ensure_loaded()
    print(load("kernels").recurrent_cpu_isa())
    torch.manual_seed(0)
    for kind, cls in (("lstm", nn.LSTM), ("gru", nn.GRU), ("tanh", nn.RNN)):
        m = cls(12, 37, num_layers=2, bidirectional=True).eval()
        x, h0 = torch.randn(6, 5, 12), torch.randn(4, 5, 37)
        with torch.no_grad():
            p = list(m._flat_weights)
            if kind == "lstm":
                got = torch.ops.chrion.lstm(x, h0, h0, p, True, 2, True, False, False)
                want = m(x, (h0, h0))
                want = (want[0], *want[1])
            elif kind == "gru":
                got, want = torch.ops.chrion.gru(x, h0, p, True, 2, True, False, False), m(x, h0)
            else:
                got = torch.ops.chrion.rnn(x, h0, p, True, 2, True, False, False, "tanh")
                want = m(x, h0)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    """
)


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_other_instruction_sets_match_aten(capability: str) -> None:
    """The AVX2 and portable builds of the kernel, chosen the way ATen chooses its own."""
    result = run_script(_ISA_SCRIPT, ATEN_CPU_CAPABILITY=capability)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[0] == capability.upper()
