"""What a live torch_chrion module costs the user's own eager PyTorch code in the same process.

A plan that places a node wide (over both CPU lanes) runs that node's ATen operators with two
intra-op threads. Had a thread of torch_chrion's own run them, it would be the master of an
OpenMP team of its own beside the caller's, and with more OpenMP threads than cores libgomp
throttles every team's spin-wait: then each small parallel operator of the user's eager code
pays a futex wake-up (Note [Chrion caller lane] in csrc/executor/executor.cpp). This measures
it on cpu_rnn.py's bidirectional GRU (3 layers of 256, batch 16, 50 steps, + Linear) loaded
from ONNX with a saved default plan, round by round in one process:

- ``beside``: the module built from the plan and called twice, then the eager work timed;
- ``alone``: the module dropped (its lanes' threads gone), then the same eager work timed;
- ``after a background plan`` (once every round is over): the model compiled with
  ``torch.compile(backend="chrion", dynamic=True)`` and called at a second length, whose bucket
  is profiled and planned on the background planner thread, which runs the wide steps of its
  graph runs as their caller; then the eager work timed again, ``--rounds`` times. A planner
  that lived on kept its OpenMP team, and the user's code ran ~2x slower for the rest of the
  process (Note [Planner ends when idle] in torch_chrion/module.py).

The eager work: ``torch.tanh`` on 16x256 floats (a call that ATen runs as a parallel region),
``torch.addmm`` 16x512 @ 512x768, and the GRU model itself in eager PyTorch. Medians (us or ms)
over rounds; the ratio is beside over alone (1.0: the module costs the user's code nothing).

    python bench/eager_beside.py [--rounds 8] [--write]

``--write`` saves the table to bench/results/eager_beside.md; nothing is written otherwise.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cpu_rnn import FEATURES, ROWS, Recurrent  # noqa: E402

import torch_chrion  # noqa: E402
from torch_chrion.profile.devices import cpu_name  # noqa: E402

# cpu_rnn.py's row whose default plan places its layers and head wide
ROW = next(row for row in ROWS if row.name == "BiGRU 3x256 + Linear (16, 50)")


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    """Median over five batches of ``calls`` calls, in microseconds per call."""
    fn()
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        batches.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(batches)


def lane_threads() -> list[str]:
    """The names of this process's torch_chrion lane threads (not the recurrent kernels' helper
    threads, chrion:rnn*, which live for the process, parked, and hold no OpenMP team)."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
        except OSError:  # the thread exited meanwhile
            continue
    return [n for n in names if n.startswith("chrion:") and not n.startswith("chrion:rnn")]


def after_background_plan(
    model: torch.nn.Module,
    x: torch.Tensor,
    tmp: Path,
    work: dict[str, tuple[Callable[[], object], int, str]],
    rounds: int,
    times: dict[tuple[str, str], list[float]],
) -> None:
    """Compile ``model``, have a second length planned in the background, then time ``work``
    ``rounds`` times into ``times[(name, "p")]`` (a fresh profile cache: no cached profile)."""
    from torch_chrion.dynamo import compiled_modules

    compiled = torch.compile(
        model, backend="chrion", dynamic=True, options={"cache_dir": str(tmp / "profiles")}
    )
    longer = torch.randn(ROW.steps + 30, ROW.batch, FEATURES)  # another shape bucket
    compiled(x)
    torch.testing.assert_close(compiled(longer), model(longer), rtol=1e-4, atol=1e-5)
    module = compiled_modules()[-1]
    assert module.wait_for_plans(timeout=600), "the background plan did not finish"
    assert module.stats["background_profiles"] >= 1, module.stats
    compiled(longer)
    for _ in range(rounds):
        for name, (fn, calls, _) in work.items():
            times[(name, "p")].append(per_call_us(fn, calls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--write", action="store_true", help="save bench/results/eager_beside.md")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = Recurrent(ROW).eval()
    x = torch.randn(ROW.steps, ROW.batch, FEATURES)
    t, a, b, c = (
        torch.randn(16, 256),
        torch.randn(16, 768),
        torch.randn(16, 512),
        torch.randn(512, 768),
    )
    work: dict[str, tuple[Callable[[], object], int, str]] = {
        "tanh 16x256": (lambda: torch.tanh(t), 400, "us"),
        "addmm 16x512 @ 512x768": (lambda: torch.addmm(a, b, c), 100, "us"),
        "eager BiGRU 3x256 b16": (lambda: model(x), 3, "ms"),
    }
    times: dict[tuple[str, str], list[float]] = {(w, s): [] for w in work for s in ("b", "a", "p")}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = Path(tmp) / "bigru.onnx"
        torch.onnx.export(model, (x,), str(path), dynamo=False)
        first = torch_chrion.load_onnx(str(path), example_inputs=[x])
        torch.testing.assert_close(first(x), model(x), rtol=1e-4, atol=1e-5)
        plan_path = Path(tmp) / "plan.json"
        first.plan.save(str(plan_path))
        wide = sorted(first.plan.wide or {})
        del first
        for _ in range(args.rounds):
            module = torch_chrion.load_onnx(str(path), example_inputs=[x], plan=str(plan_path))
            module(x)
            module(x)
            for name, (fn, calls, _) in work.items():
                times[(name, "b")].append(per_call_us(fn, calls))
            del module
            gc.collect()
            deadline = time.monotonic() + 10
            while lane_threads() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not lane_threads(), f"lane threads left: {lane_threads()}"
            for name, (fn, calls, _) in work.items():
                times[(name, "a")].append(per_call_us(fn, calls))
        after_background_plan(model, x, Path(tmp), work, args.rounds, times)

    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        "| eager work | alone | beside a live module | beside / alone "
        "| after a background plan | that / alone |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, (_, _, unit) in work.items():
        scale = 1e-3 if unit == "ms" else 1.0
        alone = statistics.median(times[(name, "a")]) * scale
        beside = statistics.median(times[(name, "b")]) * scale
        planned = statistics.median(times[(name, "p")]) * scale
        lines.append(
            f"| {name} | {alone:.1f} {unit} | {beside:.1f} {unit} | {beside / alone:.2f} "
            f"| {planned:.1f} {unit} | {planned / alone:.2f} |"
        )
    text = "\n".join(
        [
            "# Eager PyTorch beside a live torch_chrion module",
            "",
            f"CPU: {cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op threads. Command: `python bench/eager_beside.py "
            f"--rounds {args.rounds} --write`. Medians over {args.rounds} rounds, each timing "
            "the work beside a module just built from the saved default plan and called twice, "
            f"then alone once the module and its lanes are gone. Nodes the plan placed wide: "
            f"{len(wide)} ({', '.join(wide) or 'none'}). Load average when written: {load}.",
            "",
            *lines,
            "",
        ]
    )
    print(text)
    if args.write:
        (ROOT / "bench" / "results" / "eager_beside.md").write_text(text)


if __name__ == "__main__":
    main()
