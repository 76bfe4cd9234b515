"""Every chrion command in a subprocess, on a model the test exports."""

import json
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import onnxruntime
import pytest

COMMANDS = ["profile", "plan", "run", "bench", "show", "demo"]


def chrion(*args, timeout=600):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch_chrion.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command):
    result = chrion(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: chrion" in result.stdout


def test_profile_plan_run_show(stacked_lstm_onnx, tmp_path):
    model, _ = stacked_lstm_onnx
    shape = ["--shape", "x=8,2,16", "--cache-dir", tmp_path / "cache"]
    profile, plan = tmp_path / "profile.json", tmp_path / "plan.json"

    result = chrion("profile", model, *shape, "--devices", "cpu:0", "cpu:1", "-o", profile)
    assert result.returncode == 0, result.stderr
    recorded = json.loads(profile.read_text())
    assert set(recorded["devices"]) == {"cpu:0", "cpu:1"} and recorded["node_ms"]

    result = chrion(
        "plan", model, *shape, "--devices", "cpu:0", "cpu:1", "--profile", profile, "-o", plan
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(plan.read_text())["placement"]

    outputs, trace = tmp_path / "out.npz", tmp_path / "trace.json"
    result = chrion(
        "run",
        model,
        *shape,
        "--devices",
        "cpu:0",
        "cpu:1",
        "--plan",
        plan,
        "--repeats",
        3,
        "--trace",
        trace,
        "--output",
        outputs,
    )
    assert result.returncode == 0, result.stderr
    events = json.loads(trace.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    assert any(e.get("ph") == "X" for e in events)

    gantt, predicted = tmp_path / "gantt.png", tmp_path / "predicted.json"
    result = chrion("show", plan, "--gantt", gantt, "--trace", predicted)
    assert result.returncode == 0, result.stderr
    assert gantt.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(gantt).shape[0] > 100
    events = json.loads(predicted.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    assert {e["name"] for e in events if e.get("ph") == "X"} >= set(
        json.loads(plan.read_text())["placement"]
    )


def test_run_outputs_match_onnxruntime(stacked_lstm_onnx, tmp_path):
    model, _ = stacked_lstm_onnx
    outputs = tmp_path / "out.npz"
    result = chrion(
        "run",
        model,
        "--shape",
        "x=8,2,16",
        "--devices",
        "cpu",
        "--repeats",
        2,
        "--output",
        outputs,
        "--cache-dir",
        tmp_path / "cache",
    )
    assert result.returncode == 0, result.stderr
    import torch

    x = torch.randn([8, 2, 16], generator=torch.Generator().manual_seed(0)).numpy()
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        np.load(outputs)["arr_0"], session.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5
    )


def test_bench_lists_peers(stacked_lstm_onnx, tmp_path):
    model, _ = stacked_lstm_onnx
    result = chrion(
        "bench",
        model,
        "--shape",
        "x=8,2,16",
        "--devices",
        "cpu",
        "--repeats",
        3,
        "--cache-dir",
        tmp_path / "cache",
    )
    assert result.returncode == 0, result.stderr
    for engine in ("chrion", "eager cpu", "onnxruntime cpu", "inductor"):
        assert engine in result.stdout


def test_demo_runs():
    result = chrion("demo", "--frames", 16)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "max |chrion - eager|" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "missing.onnx"], "missing.onnx"),
        (
            ["plan", "{model}", "--shape", "x=8,2,16", "--objective", "memory", "-o", "p.json"],
            "slo_ms",
        ),
        (["run", "{model}", "--shape", "y=1"], "unknown inputs"),
        (["show", "missing.plan.json"], "missing.plan.json"),
    ],
)
def test_errors_are_one_line_and_nonzero(stacked_lstm_onnx, tmp_path, args, message):
    model, _ = stacked_lstm_onnx
    result = chrion(*[a.format(model=model) for a in args])
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
