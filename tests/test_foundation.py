"""The package installs, imports cheaply, and its C++ extension runs operators through the
dispatcher with the same results as torch."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torch_chrion
from torch_chrion import errors
from torch_chrion.settings import ChrionSettings

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def test_import_is_lazy():
    code = (
        "import sys, torch_chrion\n"
        "heavy = [m for m in ('onnx2torch', 'torchvision', 'torch_chrion._kernels', "
        "'torch_chrion._executor', 'scipy', 'matplotlib') if m in sys.modules]\n"
        "print(heavy)"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_import_works_with_broken_torchvision(tmp_path):
    # a torchvision that fails at import, as a mismatched one does
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')"
    )
    result = run_python(
        "import torch_chrion; print(torch_chrion.ChrionSettings().objective)",
        PYTHONPATH=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "latency"


def test_errors_inherit_builtins():
    assert issubclass(errors.ModelError, ValueError)
    assert issubclass(errors.OptionError, ValueError)
    assert issubclass(errors.UnsupportedOperatorError, NotImplementedError)
    assert issubclass(errors.ExecutionError, RuntimeError)
    for cls in (
        errors.ModelError,
        errors.UnsupportedOperatorError,
        errors.OptionError,
        errors.InfeasiblePlanError,
        errors.ExecutionError,
        errors.PlanError,
        errors.BuildError,
    ):
        assert issubclass(cls, torch_chrion.ChrionError)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_chrion_lstm_matches_torch(bidirectional, batch_first):
    from torch_chrion.ops import ensure_loaded

    ensure_loaded()
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(8, 16, num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    x = torch.randn(3, 5, 8) if batch_first else torch.randn(5, 3, 8)
    d = 2 if bidirectional else 1
    h0, c0 = torch.randn(2 * d, 3, 16), torch.randn(2 * d, 3, 16)
    with torch.no_grad():
        ref, (ref_h, ref_c) = lstm(x, (h0, c0))
        out, h, c = torch.ops.chrion.lstm(
            x, h0, c0, lstm._flat_weights, True, 2, bidirectional, batch_first, False
        )
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(h, ref_h)
    torch.testing.assert_close(c, ref_c)


def test_chrion_gru_reverse_is_backward_half_of_bidirectional():
    from torch_chrion.ops import ensure_loaded

    ensure_loaded()
    torch.manual_seed(0)
    gru = torch.nn.GRU(4, 6, bidirectional=True)
    x, h0 = torch.randn(7, 2, 4), torch.randn(2, 2, 6)
    with torch.no_grad():
        ref, ref_h = gru(x, h0)
        backward = gru._flat_weights[4:]
        out, h = torch.ops.chrion.gru(x, h0[1:], backward, True, 1, False, False, True)
    torch.testing.assert_close(out, ref[..., 6:])
    torch.testing.assert_close(h, ref_h[1:])


def test_chrion_rnn_rejects_unknown_nonlinearity():
    from torch_chrion.ops import ensure_loaded

    ensure_loaded()
    rnn = torch.nn.RNN(3, 4)
    with pytest.raises(ValueError, match="nonlinearity"):
        torch.ops.chrion.rnn(
            torch.randn(2, 1, 3),
            torch.zeros(1, 1, 4),
            rnn._flat_weights,
            True,
            1,
            False,
            False,
            False,
            "gelu",
        )


def test_extension_is_loaded_not_rebuilt_in_a_new_process():
    # the first load in this process may have built it; a second process must only load it
    code = (
        "import time, torch_chrion._extension as e\n"
        "t = time.perf_counter(); e.load('kernels'); e.load('executor')\n"
        "print(time.perf_counter() - t)"
    )
    run_python(code)  # builds if this is the very first use on the machine
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) < 10.0


def test_missing_compiler_is_a_clear_error(monkeypatch):
    from torch_chrion import _extension

    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(errors.BuildError, match="apt-get install g\\+\\+"):
        _extension._compiler()


def test_settings_reject_unknown_option_with_suggestion():
    with pytest.raises(errors.OptionError, match="did you mean 'slo_ms'"):
        ChrionSettings.from_options({"slo": 5.0})


@pytest.mark.parametrize(
    "options",
    [
        {"objective": "fast"},
        {"slo_ms": -1},
        {"objective": "memory"},
        {"devices": ["gpu"]},
        {"devices": "cpu"},
        {"granularity": "cell"},
        {"seq_chunks": 0},
        {"devices": ["cpu", "cpu"]},
    ],
)
def test_settings_reject_bad_values(options):
    with pytest.raises(errors.OptionError):
        ChrionSettings.from_options(options)


def test_settings_are_frozen_and_replaceable():
    settings = ChrionSettings.from_options({"devices": ["cpu:0", "cpu:1"]})
    assert settings.devices == ("cpu:0", "cpu:1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.objective = "memory"
    memory = dataclasses.replace(settings, objective="memory", slo_ms=5.0)
    assert memory.plan_key()["objective"] == "memory" and settings.objective == "latency"


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```")[0].strip() for b in readme.split("```\n")[1::2]]
    assert len(blocks) >= 2
    setup_and_demo, setup_and_test = blocks[0], blocks[1]
    assert setup_and_demo.endswith("chrion demo")
    assert setup_and_test in (ROOT / ".ci" / "run").read_text()


def test_plan_key_tells_cpu_thread_counts_apart():
    """A lane's intra-op thread count changes every CPU cost, so a plan made for one count is
    not reused for another (the in-process plan cache is keyed by plan_key)."""
    one, two = ChrionSettings(cpu_threads=1), ChrionSettings(cpu_threads=2)
    assert one.plan_key()["cpu_threads"] == 1
    assert one.plan_key() != two.plan_key()
    assert ChrionSettings(profile_repeats=7).plan_key() == ChrionSettings().plan_key()
