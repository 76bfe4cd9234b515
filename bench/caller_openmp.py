"""What ATen work on the calling thread costs the next call of torch_chrion (and, for
comparison, of onnxruntime), with and without ``OMP_WAIT_POLICY=PASSIVE``.

After an ATen operator that ran in parallel on the calling thread (eager pre-processing: here
50 matmuls of 256x256), libgomp's OpenMP worker threads keep spinning for milliseconds waiting
for the next parallel region. On a machine with few cores they hold a core that the next
engine's threads need. Each engine is timed in three situations, interleaved round by round:
right after a call of its own, after 30 ms idle, and right after the matmuls. Each environment runs
in a fresh process (the OpenMP runtime reads its settings once, when it starts).

    python bench/caller_openmp.py [--rounds 60] [--write]

``--write`` saves the table to bench/results/caller_openmp.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITUATIONS = ("back to back", "after 30 ms idle", "after eager matmuls")
ENVIRONMENTS = {"default": {}, "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}


def _timed_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def measure(rounds: int) -> dict[str, dict[str, float]]:
    """Median ms of each engine in each situation, in this process."""
    import onnxruntime
    import torch

    import torch_chrion
    from torch_chrion.demo import DEMO_ONNX, example_inputs

    (x,) = example_inputs()
    chrion = torch_chrion.load_onnx(str(DEMO_ONNX), example_inputs=[x])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(
        str(DEMO_ONNX), options, providers=["CPUExecutionProvider"]
    )
    feed = {session.get_inputs()[0].name: x.numpy()}
    engines: dict[str, Callable[[], object]] = {
        "torch_chrion": lambda: chrion(x),
        "onnxruntime 2t": lambda: session.run(None, feed),
    }
    a = torch.randn(256, 256)

    def matmuls() -> None:
        for _ in range(50):
            a @ a

    times = {(e, s): [] for e in engines for s in SITUATIONS}
    with torch.no_grad():
        for _ in range(10):
            for run in engines.values():
                run()
        for _ in range(rounds):
            for name, run in engines.items():
                time.sleep(0.03)  # the previous engine's matmuls' spinning threads park
                run()
                times[(name, SITUATIONS[0])].append(_timed_ms(run))
                time.sleep(0.03)
                times[(name, SITUATIONS[1])].append(_timed_ms(run))
                matmuls()
                times[(name, SITUATIONS[2])].append(_timed_ms(run))
    return {e: {s: statistics.median(times[(e, s)]) for s in SITUATIONS} for e in engines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--write", action="store_true", help="save bench/results/caller_openmp.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.rounds)))
        return
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        "| environment | engine | " + " | ".join(SITUATIONS) + " |",
        "|---|---|" + "---:|" * len(SITUATIONS),
    ]
    for env_name, extra in ENVIRONMENTS.items():
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | extra
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--rounds", str(args.rounds)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result = json.loads(out.strip().splitlines()[-1])
        for engine, by_situation in result.items():
            cells = " | ".join(f"{by_situation[s]:.2f}" for s in SITUATIONS)
            lines.append(f"| {env_name} | {engine} | {cells} |")
    from torch_chrion.profile.devices import cpu_name

    text = "\n".join(
        [
            "# A call right after ATen work on the calling thread",
            "",
            f"CPU: {cpu_name()} ({os.cpu_count()} cores). Command: `python bench/caller_openmp.py "
            f"--rounds {args.rounds} --write`. Demo speech model (`torch_chrion.demo`), median "
            f"ms of {args.rounds} interleaved rounds; torch_chrion with its defaults (two "
            f"1-thread CPU lanes), onnxruntime with 2 intra-op threads. Load average when "
            f"written: {load}.",
            "",
            *lines,
            "",
        ]
    )
    print(text)
    if args.write:
        (ROOT / "bench" / "results" / "caller_openmp.md").write_text(text)


if __name__ == "__main__":
    main()
