"""torch.compile(model, backend="chrion"): found without importing torch_chrion, recurrent
layers inside one chrion graph, outputs equal to eager."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo
from models import BiGRUWithState, StackedLSTM
from torch import nn

from torch_chrion.errors import OptionError


def test_backend_is_listed_without_importing_torch_chrion():
    code = (
        "import sys, torch._dynamo\n"
        "print('chrion' in torch._dynamo.list_backends(), 'torch_chrion' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


def reset_dynamo():
    """torch._dynamo.reset() as a fresh process: it clears Dynamo's compile callbacks, which a
    fresh process gets back when it imports torch_chrion.dynamo."""
    import torch_chrion.dynamo as chrion_dynamo

    torch._dynamo.reset()
    chrion_dynamo.install_compile_hooks()


def _compile_and_count(model, inputs, options=None):
    reset_dynamo()
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = torch.compile(model, backend="chrion", options=options or {"devices": ["cpu"]})
    with torch.no_grad():
        out = compiled(*inputs)
    breaks = sum(counters["graph_break"].values())
    return out, counters["stats"]["unique_graphs"], breaks


def test_lstm_model_compiles_to_one_chrion_graph_that_matches_eager():
    import torch_chrion.dynamo as chrion_dynamo

    torch.manual_seed(0)
    model = StackedLSTM().eval()
    inputs = model.example_inputs()
    out, graphs, breaks = _compile_and_count(model, inputs)
    assert graphs == 1 and breaks == 0
    module = chrion_dynamo.compiled_modules()[-1]
    targets = {
        str(n.target) for n in module.captured_graph().graph.nodes if n.op == "call_function"
    }
    assert any(t.startswith("chrion.lstm") for t in targets), targets
    with torch.no_grad():
        torch.testing.assert_close(out, model(*inputs), rtol=1e-5, atol=1e-6)


def test_bidirectional_gru_with_state_over_two_cpu_lanes():
    torch.manual_seed(0)
    model = BiGRUWithState().eval()
    inputs = model.example_inputs()
    out, graphs, breaks = _compile_and_count(model, inputs, {"devices": ["cpu:0", "cpu:1"]})
    assert graphs == 1 and breaks == 0
    with torch.no_grad():
        ref = model(*inputs)
    for got, want in zip(out, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_new_shape_recompiles_and_reuses_the_bucket_plan():
    import torch_chrion.dynamo as chrion_dynamo

    torch.manual_seed(0)
    model = StackedLSTM().eval()
    reset_dynamo()
    compiled = torch.compile(model, backend="chrion", dynamic=False, options={"devices": ["cpu"]})
    with torch.no_grad():
        for seq in (9, 12, 16):
            x = model.example_inputs(seq=seq)[0]
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    modules = chrion_dynamo.compiled_modules()
    # lengths 9..16 share a bucket: one profile (possibly from the on-disk cache) for all three
    assert [m.profiles_made for m in modules[-3:]] == [1, 0, 0]
    assert all(m.plan is not None for m in modules[-3:])


def test_unknown_option_is_an_error_naming_the_closest():
    reset_dynamo()
    model = StackedLSTM().eval()
    compiled = torch.compile(model, backend="chrion", options={"objectiv": "latency"})
    with pytest.raises(Exception) as info:
        compiled(*model.example_inputs())
    cause = info.value
    while cause is not None and not isinstance(cause, OptionError):
        cause = cause.__cause__ or cause.__context__
    assert isinstance(cause, OptionError) and "objective" in str(cause)


def test_profiles_of_a_default_compile_go_to_the_tests_private_cache(private_chrion_cache):
    """The session's cache (tests/conftest.py), not ~/.cache: a compile with no cache_dir
    writes its profile under $TORCH_CHRION_CACHE/profiles, a temporary folder."""
    from torch_chrion._extension import cache_root

    assert cache_root() == private_chrion_cache
    assert Path.home() not in private_chrion_cache.parents
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(7, 3), nn.Tanh()).eval()
    x = torch.randn(5, 7)
    compiled = torch.compile(model, backend="chrion", options={"devices": ["cpu"]})
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    assert list((private_chrion_cache / "profiles").rglob("*.json"))


class _Recurrent(nn.Module):
    def __init__(self, kind: type[nn.RNNBase], bidirectional: bool) -> None:
        super().__init__()
        self.rnn = kind(12, 16, num_layers=2, bidirectional=bidirectional)

    def forward(self, x):
        return self.rnn(x)[0]


@pytest.mark.parametrize(
    ("kind", "bidirectional", "op"),
    [(nn.GRU, False, "gru"), (nn.RNN, False, "rnn"), (nn.LSTM, True, "lstm")],
    ids=["gru", "rnn", "bilstm"],
)
def test_a_plain_dynamo_reset_still_compiles_recurrent_layers_to_chrion_kernels(
    kind, bidirectional, op
):
    """``torch._dynamo.reset()`` alone, as bench/cpu_rnn.py calls it before each model: chrion's
    compile callbacks come back by themselves, so the layers reach the chrion kernels (they
    used to run eagerly, the frame skipped at the RNN module with nothing to say so)."""
    import torch_chrion.dynamo as chrion_dynamo

    torch.manual_seed(0)
    model = _Recurrent(kind, bidirectional).eval()
    x = torch.randn(10, 3, 12)
    torch._dynamo.reset()
    before = chrion_dynamo.compiled_modules()
    compiled = torch.compile(model, backend="chrion")
    with torch.no_grad():
        out = compiled(x)
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)
    (module,) = [m for m in chrion_dynamo.compiled_modules() if m not in before]
    ops = module.plan.ops.values()
    recurrent = [o for o in ops if o.split(".")[-2] in ("lstm", "gru", "rnn", "rnn_tanh")]
    assert recurrent and all(o == f"chrion.{op}.default" for o in recurrent), ops
    # one node per layer and direction: each runs whole in the kernel, none left to ATen
    assert len(recurrent) == 2 * (2 if bidirectional else 1), ops


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_auto_granularity_keeps_a_layer_over_a_batch_of_8_whole(dynamic):
    """On CPU lanes alone a layer over a batch of 8 runs as one node (Note [Auto granularity]),
    in a shape-generic graph too (its split follows the first call's batch)."""
    import torch_chrion.dynamo as chrion_dynamo

    torch.manual_seed(0)
    model = _Recurrent(nn.LSTM, True).eval()
    torch._dynamo.reset()
    before = chrion_dynamo.compiled_modules()
    compiled = torch.compile(model, backend="chrion", dynamic=dynamic)
    with torch.no_grad():
        for batch in (8, 1):
            x = torch.randn(10, batch, 12)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    (module, *_) = [m for m in chrion_dynamo.compiled_modules() if m not in before]
    recurrent = [o for o in module.plan.ops.values() if o == "chrion.lstm.default"]
    assert len(recurrent) == 1, module.plan.ops


def test_callbacks_restored_after_a_reset_still_leave_other_backends_their_graph_break():
    seen = []

    def recording(gm, example_inputs):
        seen.extend(n.target for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(_Recurrent(nn.GRU, False).eval(), backend=recording)(torch.randn(5, 1, 12))
    assert torch.gru not in seen


class RecurrentWithWideHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(32, 128)
        self.head = nn.Linear(128, 1024)

    def forward(self, x):
        return torch.relu(self.head(self.lstm(x)[0]))


def test_a_linear_head_compiles_to_a_dense_product_equal_to_eager():
    """nn.Linear (aten.addmm of a transposed parameter) becomes one chrion::dense node, which
    the CPU kernel runs against its packed panels (tests/kernels/test_packed_products.py)."""
    import torch_chrion.dynamo as chrion_dynamo

    torch.manual_seed(0)
    model = RecurrentWithWideHead().eval()
    x = torch.randn(96, 2, 32)  # 192 rows: a 192 x 128 x 1024 product
    reset_dynamo()
    compiled = torch.compile(model, backend="chrion", options={"devices": ["cpu"]})
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
    graph = chrion_dynamo.compiled_modules()[-1].captured_graph()
    assert [n for n in graph.graph.nodes if n.target is torch.ops.chrion.dense.default]
