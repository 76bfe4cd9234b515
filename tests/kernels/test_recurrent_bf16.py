"""chrion's bfloat16 CPU recurrent kernels (recurrent_dtype="bfloat16"; Note [bf16 recurrent
weights] in csrc/kernels/recurrent_cpu_impl.h), against two references:

- an eager bfloat16 reference (bf16_reference.py: W_hh and h rounded where they enter the
  recurrent product, float32 everywhere else), to float32 rounding: one time step, and every
  step of a sequence fed the reference's own previous state (over several steps the two would
  drift apart by the odd hidden value that a 1e-7 difference rounds to the other bfloat16);
- aten's float32 layers, within the error the README states for the setting (BF16_TOL).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from bf16_reference import run_bf16_reference, to_bf16
from fresh_process import run_script
from recurrent_reference import make_module, run_reference
from test_recurrent_threads import intra_op_threads
from torch import Tensor, nn

import torch_chrion
from torch_chrion._extension import load
from torch_chrion.ops import ensure_loaded

# The bfloat16 reference differs from the kernel by float32 rounding alone (summation order,
# the gate activations' few ulp).
REFERENCE_TOL = {"rtol": 1e-5, "atol": 2e-5}
# Rounding W_hh and h to bfloat16 (relative error <= 2^-9, RMS 2^-9/sqrt(3)) moves a recurrent
# pre-activation by ~1e-3 RMS at PyTorch's default init (sqrt(2) 2^-9/sqrt(3) ||W_hh row||_2
# ||h||_2); over the recurrence outputs stayed within 6.1e-3 of float32 (LSTM / GRU 3.0e-3,
# tanh / relu RNN 5.5e-3 / 6.1e-3; hidden 32-1024, batch 1-64, up to 100 steps). The stated
# bound, with margin:
BF16_TOL = {"rtol": 1e-2, "atol": 1e-2}


def bf16_params(module: nn.Module) -> list[Tensor]:
    """``module``'s flat weights with every W_hh in bfloat16, as the setting's graph pass gives
    them to the operators."""
    per_layer = 4 if module.bias else 2
    return [
        w.to(torch.bfloat16) if i % per_layer == 1 else w
        for i, w in enumerate(module._flat_weights)
    ]


def run_bf16(
    kind: str,
    module: nn.Module,
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    batch_first: bool = False,
    reverse: bool = False,
) -> tuple[Tensor, ...]:
    """chrion's operator on ``module``'s weights with bfloat16 W_hh; checks its kernel ran."""
    ensure_loaded()
    params = bf16_params(module)
    flags = (module.bias, module.num_layers, module.bidirectional, batch_first, reverse)
    with torch.no_grad():
        if kind == "lstm":
            out = torch.ops.chrion.lstm(x, h0, c0, params, *flags)
        elif kind == "gru":
            out = torch.ops.chrion.gru(x, h0, params, *flags)
        else:
            out = torch.ops.chrion.rnn(x, h0, params, *flags, kind[4:])
    per_layer = 4 if module.bias else 2
    assert all(load("kernels").packed_weights_hold(w) for w in params[1::per_layer])
    return out


def _model(kind, features, hidden, layers, bidirectional, batch, steps, batch_first, bias=True):
    module = make_module(kind, features, hidden, layers, bidirectional, bias)
    module.batch_first = batch_first
    dirs = 2 if bidirectional else 1
    x = torch.randn((batch, steps, features) if batch_first else (steps, batch, features))
    h0 = torch.randn(layers * dirs, batch, hidden)
    c0 = torch.randn(layers * dirs, batch, hidden) if kind == "lstm" else None
    return module, x, h0, c0


# hidden: odd (7, 33: a padded last pair of columns), one block (16), several (64, 256); batch
# 1 to 64 (row groups and their rest); layers, both directions, batch-first, no biases
CASES = [
    # kind, features, hidden, layers, bidirectional, batch, batch_first, bias
    ("lstm", 10, 20, 1, False, 1, False, True),
    ("lstm", 5, 33, 3, True, 5, True, True),
    ("lstm", 64, 256, 2, True, 1, False, True),
    ("lstm", 16, 64, 1, False, 64, False, False),
    ("gru", 10, 20, 2, True, 3, False, True),
    ("gru", 40, 7, 1, False, 9, True, True),
    ("gru", 64, 256, 1, False, 32, False, True),
    ("gru", 12, 33, 2, False, 2, False, False),
    ("rnn_tanh", 6, 33, 2, True, 5, True, True),
    ("rnn_tanh", 16, 64, 1, False, 1, False, True),
    ("rnn_relu", 10, 20, 2, True, 7, False, True),
    ("rnn_relu", 8, 256, 1, False, 4, False, False),
]
IDS = [f"{c[0]}-h{c[2]}-l{c[3]}{'-bi' if c[4] else ''}-b{c[5]}" for c in CASES]


@pytest.mark.parametrize("kind,features,hidden,layers,bidirectional,batch,batch_first,bias", CASES, ids=IDS)  # fmt: skip
def test_one_step_to_the_reference_and_sequences_to_float32(
    kind, features, hidden, layers, bidirectional, batch, batch_first, bias
) -> None:
    """One time step equals the bfloat16 reference to float32 rounding; 30 steps stay within
    the stated error of aten's float32 layer."""
    torch.manual_seed(hidden * 100 + batch)
    module, x, h0, c0 = _model(
        kind, features, hidden, layers, bidirectional, batch, 30, batch_first, bias
    )
    first = x[:, :1] if batch_first else x[:1]
    got = run_bf16(kind, module, first, h0, c0, batch_first)
    with torch.no_grad():
        want = run_bf16_reference(kind, module, first, h0, c0, batch_first)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **REFERENCE_TOL)
    got = run_bf16(kind, module, x, h0, c0, batch_first)
    with torch.no_grad():
        want = run_reference(kind, module, x, h0, c0)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **BF16_TOL)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("hidden,batch", [(33, 5), (256, 1)])
def test_every_step_matches_the_bf16_reference_from_its_state(kind, hidden, batch) -> None:
    """A 24-step trajectory of the reference; the kernel run one step from each of its
    states (h, and c for LSTM) lands on the next one."""
    torch.manual_seed(7)
    module, x, h0, c0 = _model(kind, 12, hidden, 1, False, batch, 24, False)
    with torch.no_grad():
        want = run_bf16_reference(kind, module, x, h0, c0, False)
    h, c = h0, c0
    for t in range(x.shape[0]):
        got = run_bf16(kind, module, x[t : t + 1], h, c)
        torch.testing.assert_close(got[0][0], want[0][t], **REFERENCE_TOL)
        h = want[0][t : t + 1]
        if kind == "lstm":
            with torch.no_grad():
                c = run_bf16_reference(kind, module, x[: t + 1], h0, c0, False)[2]
            torch.testing.assert_close(got[2], c, **REFERENCE_TOL)


@pytest.mark.parametrize(
    "kind,hidden,layers,bidirectional,batch",
    [("lstm", 256, 2, False, 1), ("gru", 100, 2, True, 8), ("rnn_tanh", 161, 1, True, 3)],
)
def test_every_thread_count_gives_the_one_thread_result(
    kind, hidden, layers, bidirectional, batch
) -> None:
    """Each thread rounds the state for its own slices (and stolen ones): the result does not
    depend on how the steps' blocks are shared out."""
    torch.manual_seed(8)
    module, x, h0, c0 = _model(kind, 16, hidden, layers, bidirectional, batch, 12, False)
    with intra_op_threads(1):
        one = run_bf16(kind, module, x, h0, c0)
    for n in (2, 3):
        with intra_op_threads(n):
            many = run_bf16(kind, module, x, h0, c0)
        for a, b in zip(one, many, strict=True):
            assert torch.equal(a, b), f"{n} threads differ from one"


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_reverse_is_the_forward_run_of_the_flipped_input(kind: str) -> None:
    torch.manual_seed(9)
    module, x, h0, c0 = _model(kind, 8, 20, 1, False, 3, 6, False)
    backwards = run_bf16(kind, module, x, h0, c0, reverse=True)
    forwards = run_bf16(kind, module, x.flip(0), h0, c0)
    assert torch.equal(backwards[0], forwards[0].flip(0))
    for a, b in zip(backwards[1:], forwards[1:], strict=True):
        assert torch.equal(a, b)


def test_pytorch_kernels_take_the_weights_widened() -> None:
    """Where chrion's kernel does not run (here float64 inputs; a CUDA lane), bfloat16 W_hh is
    widened to the input's dtype: aten's result on the rounded weights."""
    torch.manual_seed(10)
    module = make_module("gru", 8, 20, 1, False).double()
    x, h0 = torch.randn(5, 2, 8, dtype=torch.float64), torch.randn(1, 2, 20, dtype=torch.float64)
    params = bf16_params(module)
    with torch.no_grad():
        got = torch.ops.chrion.gru(x, h0, params, True, 1, False, False, False)
        module.weight_hh_l0.copy_(params[1].double())
        want = module(x, h0)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(12, 40, num_layers=2, bidirectional=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x)[0]


def test_the_setting_runs_the_bf16_kernel_end_to_end(tmp_path) -> None:
    """recurrent_dtype="bfloat16" through torch.compile and load_onnx: the operator's bfloat16
    result (the layers split apart run the same steps), not float32's."""
    torch.manual_seed(11)
    model = _Encoder().eval()
    x = torch.randn(9, 1, 12)
    zeros = torch.zeros(4, 1, 40)
    want = run_bf16("lstm", model.lstm, x, zeros, zeros)[0]
    with torch.no_grad():
        float32 = model(x)
    path = tmp_path / "encoder.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17)
    options = {"recurrent_dtype": "bfloat16", "devices": ["cpu"], "profile_budget_s": 2.0}
    compiled = torch.compile(model, backend="chrion", options=options)
    loaded = torch_chrion.load_onnx(str(path), example_inputs=(x,), **options)
    with torch.no_grad():
        for got in (compiled(x), loaded(x)):
            got = got[0] if isinstance(got, (list, tuple)) else got
            torch.testing.assert_close(got, want, **REFERENCE_TOL)
            assert not torch.allclose(got, float32, rtol=0, atol=1e-5)


_ISA_SCRIPT = textwrap.dedent(
    """
    import torch
    from test_recurrent_bf16 import BF16_TOL, REFERENCE_TOL, _model, run_bf16
    from bf16_reference import run_bf16_reference
    from recurrent_reference import run_reference
    from torch_chrion._extension import load
    from torch_chrion.ops import ensure_loaded
    ensure_loaded()
    print(load("kernels").recurrent_cpu_isa(), load("kernels").recurrent_bf16_product())
    torch.manual_seed(0)
    for kind in ("lstm", "gru", "rnn_tanh"):
        module, x, h0, c0 = _model(kind, 12, 37, 2, True, 5, 6, False)
        for steps, reference, tol in ((1, run_bf16_reference, REFERENCE_TOL), (6, None, BF16_TOL)):
            got = run_bf16(kind, module, x[:steps], h0, c0)
            with torch.no_grad():
                want = (
                    reference(kind, module, x[:steps], h0, c0, False)
                    if reference
                    else run_reference(kind, module, x, h0, c0)
                )
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, **tol)
    """
)


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_other_instruction_sets(capability: str) -> None:
    """The AVX2 and portable builds of the bfloat16 product (their own widening code)."""
    result = run_script(_ISA_SCRIPT, ATEN_CPU_CAPABILITY=capability)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[:2] == [capability.upper(), "widened"]


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_bf16_weights_take_dot_products_where_the_cpu_has_them() -> None:
    """With AVX-512 kernels on a CPU that /proc/cpuinfo says has AVX512-BF16, bfloat16 W_hh is
    multiplied with vdpbf16ps (Note [bf16 dot products]), else widened to float32; the tests
    above hold whichever this CPU runs to the reference, and test_other_instruction_sets the
    widening code of the other builds."""
    kernels = load("kernels")
    dot = kernels.recurrent_cpu_isa() == "AVX512" and "avx512_bf16" in _cpu_flags()
    assert kernels.recurrent_bf16_product() == ("vdpbf16ps" if dot else "widened")


def test_to_bf16_rounds_to_nearest_even() -> None:
    """The reference's rounding is the kernel's: 1 + 2^-8 (a tie) goes to 1, 1 + 3 * 2^-8 up."""
    ties = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8])
    assert to_bf16(ties).tolist() == [1.0, 1 + 2**-6]
